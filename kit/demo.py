"""The main job on embedded demo data: ``python -m kit.demo --out demo_out``.

Runs the kit's command-line tools one after another, as a user would, on a synthetic
competition directory made by :mod:`kit.synth` (no download, no real data needed):

1. ``kit.synth``       -> OUT/data (train.csv, train/, test/, sample_submission.csv, test_labels.csv)
2. ``kit.train baseline`` on fold 0 -> OUT/models/baseline (model folder, oof.csv, oof_score.json)
3. ``kit.cv``          -> out-of-fold table of the baseline (OUT/cv_baseline_oof.json)
4. ``kit.predict``     -> OUT/submission.csv for the test images (cell types from the classifier)
5. ``kit.submission``  -> validates it
6. ``kit.cv``          -> scores the submission against the synthetic test labels

Each step's exit status is checked; the first failure stops the demo with its code.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ python -m {' '.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args])
    if done.returncode != 0:
        print(f"demo: step '{title}' failed with exit code {done.returncode}", file=sys.stderr)
        raise SystemExit(done.returncode)
    print(f"--- {title}: {time.perf_counter() - start:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.demo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for every artefact")
    parser.add_argument("--n-train", type=int, default=40, help="synthetic train images")
    parser.add_argument("--n-test", type=int, default=6, help="synthetic test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)

    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    data, model = out / "data", out / "models" / "baseline"
    if not (data / "train.csv").is_file():
        _step("synthetic competition data", "kit.synth", str(data), "--n-train", str(args.n_train),
              "--n-test", str(args.n_test), "--seed", str(args.seed))
    _step("train baseline (fold 0) and score out of fold", "kit.train", "baseline",
          "--data", str(data), "--fold", "0", "--out", str(model))
    _step("kit.cv on the baseline's out-of-fold predictions", "kit.cv", "--gt", str(data / "train.csv"),
          "--pred", str(model / "oof.csv"), "--folds", str(model / "folds.csv"), "--fold", "0",
          "--json", str(out / "cv_baseline_oof.json"), "--quiet")
    _step("predict the test images", "kit.predict", "--model", str(model), "--images",
          str(data / "test"), "--ids", str(data / "sample_submission.csv"),
          "--out", str(out / "submission.csv"), "--quiet")
    _step("validate submission.csv", "kit.submission", str(out / "submission.csv"), "--data", str(data))
    _step("score submission.csv against the synthetic test labels", "kit.cv",
          "--gt", str(data / "test_labels.csv"), "--pred", str(out / "submission.csv"),
          "--json", str(out / "cv_submission.json"), "--quiet")
    print("\nArtefacts:")
    for label, path in [("synthetic data", data), ("baseline model folder", model),
                        ("baseline OOF predictions", model / "oof.csv"),
                        ("OOF scores (JSON)", out / "cv_baseline_oof.json"),
                        ("submission", out / "submission.csv"),
                        ("submission scores (JSON)", out / "cv_submission.json")]:
        print(f"  {label:<26} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
