"""The main job on embedded demo data: ``python -m tools.demo --out demo_out``.

Runs the kit's command-line tools one after another, as a user would, on a synthetic
competition directory made by :mod:`kit.synth` (no download, no real data needed):

1. ``kit.synth``      -> OUT/data (train.csv, train/, test/, sample_submission.csv, test_labels.csv)
2. ``kit.train``      -> OUT/models/{baseline,cellpose,maskrcnn}: fold 0 held out, short CPU training
                         (``--budget`` minutes each, CPU configs), OOF predictions and their score
3. ``kit.cv``         -> the out-of-fold table of every model (OUT/cv_<model>_oof.json)
4. ``build_bundle.py``-> OUT/bundle: kit wheel, vendored wheels, all model folders, MANIFEST.json
5. a Kaggle-like venv (only what a Kaggle image has) at OUT/kaggle-env, then with the network
   off (``unshare -n``): ``kernels/infer/infer.py`` installs the bundle and writes
   OUT/working/submission.csv with the model of best OOF MAP, and validates it
6. ``kit.cv``         -> the submission scored against the synthetic test labels

Each step's exit status is checked; the first failure stops the demo with its code.
Run again on the same ``--out``: the synthetic data and the Kaggle-like venv are reused, every
model is trained again from scratch (``kit.train --fresh``), and every later output is
replaced; ``--fresh`` here deletes ``--out`` first.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
CPU_CONFIGS = {"cellpose": "cellpose_cpu.yaml", "maskrcnn": "maskrcnn_cpu_demo.yaml"}


def _step(title: str, *args: str) -> None:
    """``python -m <args>`` as a demo step (see :func:`_run`)."""
    _run(title, [sys.executable, "-m", *args], shown=f"python -m {' '.join(args)}")


def _run(title: str, cmd: list[str], env=None, shown: str | None = None) -> None:
    """Run one demo step, print its command and time; a failure ends the demo with its code."""
    print(f"\n=== {title}\n$ {shown or ' '.join(map(str, cmd))}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(list(map(str, cmd)), env=env)
    if done.returncode != 0:
        print(f"demo: step '{title}' failed with exit code {done.returncode}", file=sys.stderr)
        raise SystemExit(done.returncode)
    print(f"--- {title}: {time.perf_counter() - start:.1f} s", flush=True)


def _best_model(out: Path, models: list[str]) -> str:
    import json

    maps = {m: json.loads((out / f"cv_{m}_oof.json").read_text())["map"] for m in models}
    print("\nOOF MAP: " + ", ".join(f"{m} {v:.4f}" for m, v in maps.items()))
    return max(maps, key=maps.get)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for every artefact")
    parser.add_argument("--n-train", type=int, default=30, help="synthetic train images")
    parser.add_argument("--n-test", type=int, default=4, help="synthetic test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--budget", type=float, default=3.0, help="training minutes per trained model")
    parser.add_argument("--models", nargs="+", default=["baseline", "cellpose", "maskrcnn"],
                        choices=["baseline", "cellpose", "maskrcnn"], help="models to train and bundle")
    parser.add_argument("--no-offline", action="store_true",
                        help="stop after the bundle (no Kaggle-like env, no offline kernel run)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    data = out / "data"
    if not (data / "train.csv").is_file():
        _step("synthetic competition data", "kit.synth", str(data), "--n-train", str(args.n_train),
              "--n-test", str(args.n_test), "--seed", str(args.seed), "--no-progress")
    for model in args.models:
        folder = out / "models" / model
        extra = [] if model == "baseline" else [
            "--config", str(REPO / "kit" / "configs" / CPU_CONFIGS[model]), "--time-budget", str(args.budget)]
        _step(f"train {model} (fold 0 held out) and score out of fold", "kit.train", model,
              "--data", str(data), "--fold", "0", "--n-folds", "4", "--out", str(folder), *extra,
              "--fresh", "--quiet")
        _step(f"kit.cv on {model}'s out-of-fold predictions", "kit.cv", "--gt", str(data / "train.csv"),
              "--pred", str(folder / "oof.csv"), "--folds", str(folder / "folds.csv"), "--fold", "0",
              "--json", str(out / f"cv_{model}_oof.json"), "--quiet")
    best = _best_model(out, args.models)
    bundle_dir = out / "bundle"
    _run("build the bundle", [sys.executable, REPO / "build_bundle.py", "--weights",
                              *[out / "models" / m for m in args.models], "--out", bundle_dir])
    artefacts = [("synthetic data", data), ("model folders", out / "models"),
                 ("OOF scores (JSON)", out / "cv_<model>_oof.json"), ("bundle", bundle_dir)]
    if not args.no_offline:
        from tools.bundle import make_kaggle_like_env, offline_command

        print("\n=== Kaggle-like environment (first time: a few minutes)", flush=True)
        python = make_kaggle_like_env(out / "kaggle-env")
        prefix, env, how = offline_command()
        work = out / "working"
        _run(f"inference kernel, network off via {how}, model {best}",
             [*prefix, python, REPO / "kernels" / "infer" / "infer.py", "--bundle", bundle_dir,
              "--data", data, "--out", work, "--model", best], env=env)
        _step("score submission.csv against the synthetic test labels", "kit.cv",
              "--gt", str(data / "test_labels.csv"), "--pred", str(work / "submission.csv"),
              "--json", str(out / "cv_submission.json"), "--quiet")
        artefacts += [("Kaggle-like venv", out / "kaggle-env"), ("submission", work / "submission.csv"),
                      ("submission scores (JSON)", out / "cv_submission.json")]
    print("\nArtefacts:")
    for label, path in artefacts:
        print(f"  {label:<26} {path}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
