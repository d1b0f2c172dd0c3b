"""Training step time of this tree against an earlier commit: same config, same images, one run.

Run: ``python -m benchmarks.step_time [--ref 8bfaed1] [--models cellpose maskrcnn]
[--data ../shared/data/sartorius] [--images 32] [--json OUT]``.

The default ``--ref`` is the last commit before training data moved out of RAM (Cellpose's
targets cached on disk and read per batch, its SizeModel loop, streamed out-of-fold rows).
Its tree is unpacked with ``git archive`` and run with this environment's Python. For each
model, on the same competition subset (``--images`` training images of ``--data``, 4 held
out, the model's CPU config as each tree has it, ``--epochs`` fixed, one thread):

1. ``ref``: ``kit.train`` from the old tree;
2. ``first``: from this tree with an empty ``KIT_CACHE``: its data preparation builds the
   cache (the first-run cost, reported separately);
3. ``now``: from this tree again, the cache read.

Step seconds: Cellpose = an epoch's seconds / its batches (``epochs.csv``), Mask R-CNN = the
seconds of each iteration (``train_iter.csv``); the median over the steps after the first
epoch (Cellpose) or the first 3 iterations (Mask R-CNN). Printed per model: step seconds,
data-preparation seconds, whole-run seconds and peak RSS of the three runs, and the ratio of
steps per second now / ref (>= 1: no slower). ``--repeats R`` runs ref and now R times each,
alternating, and the ratio is that of their median steps (one run's median step moves by up to
20 % between identical runs here). The load average is printed: the machine is shared.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.memory import CPU_CONFIGS, DEFAULT_DATA, REPO, competition_ids, peak_rss_mb, subset_dir

DEFAULT_REF = "8bfaed1"
EPOCHS = {"cellpose": 4, "maskrcnn": 1}


def unpack(ref: str, out: Path) -> Path:
    """The tree of commit ``ref`` of this repository, unpacked into ``out``."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref],
                              check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: git archive {ref}: {e.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out


def step_seconds(model: str, run: Path) -> list[float]:
    """Seconds of each training step of a finished run folder (module docstring)."""
    if model == "cellpose":
        with open(run / "epochs.csv", newline="") as f:
            rows = list(csv.DictReader(f))[1:]
        return [float(r["seconds"]) / max(1, -(-int(r["n_crops"]) // 8)) for r in rows]
    with open(run / "train_iter.csv", newline="") as f:
        return [float(r["seconds"]) for r in list(csv.DictReader(f))[3:]]


def prep_seconds(run: Path) -> float | None:
    """Seconds of the data preparation (Cellpose's ``cellpose_data`` event), if logged."""
    for line in (run / "train.log").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "cellpose_data":
            return event.get("seconds")
    return None


def one_run(model: str, tree: Path, data: Path, out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "kit.train", model, "--data", str(data), "--folds",
           str(data / "folds.csv"), "--fold", "1", "--out", str(out), "--epochs", str(EPOCHS[model]),
           "--quiet", "--config", str(tree / "kit" / "configs" / CPU_CONFIGS[model])]
    env = {**env, "PYTHONPATH": str(tree)}
    rss, seconds, code = peak_rss_mb(cmd, env, cwd=tree)
    if code:
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) exited {code}")
    steps = step_seconds(model, out)
    return {"step_s": round(statistics.median(steps), 3), "n_steps": len(steps),
            "prep_s": prep_seconds(out), "run_s": round(seconds, 1), "peak_rss_mb": round(rss, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_time",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ref", default=DEFAULT_REF, help="the earlier commit to compare with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="competition directory")
    parser.add_argument("--models", nargs="+", default=["cellpose", "maskrcnn"], choices=sorted(EPOCHS))
    parser.add_argument("--images", type=int, default=32, help="training images")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of ref and now each, alternating (the ratio of their median steps)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        ids = competition_ids(args.data, args.images + 4)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()[0]:.2f}; {args.images} training images of {args.data}; "
          f"ref {args.ref}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="kit-bench-steps-") as tmp:
        tmp = Path(tmp)
        old = unpack(args.ref, tmp / "ref")
        data = subset_dir(args.data, ids[:args.images], ids[args.images:args.images + 4], tmp / "data")
        base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for model in args.models:
            env = {**base_env, "KIT_CACHE": str(tmp / f"cache_{model}")}
            rows = {"ref": one_run(model, old, data, tmp / f"{model}_ref", env),
                    "first": one_run(model, REPO, data, tmp / f"{model}_first", env),
                    "now": one_run(model, REPO, data, tmp / f"{model}_now", env)}
            for k in range(2, max(1, args.repeats) + 1):
                rows[f"ref {k}"] = one_run(model, old, data, tmp / f"{model}_ref{k}", env)
                rows[f"now {k}"] = one_run(model, REPO, data, tmp / f"{model}_now{k}", env)
            ref_s = statistics.median(r["step_s"] for n, r in rows.items() if n.startswith("ref"))
            now_s = statistics.median(r["step_s"] for n, r in rows.items() if n.startswith("now"))
            ratio = ref_s / now_s
            results[model] = {**rows, "steps_per_s_now_over_ref": round(ratio, 3)}
            for name, r in rows.items():
                print(f"  {model:<9} {name:<6} step {r['step_s']:6.2f} s (median of {r['n_steps']})  "
                      f"data preparation {r['prep_s'] if r['prep_s'] is not None else '-':>5} s  "
                      f"run {r['run_s']:6.1f} s  peak RSS {r['peak_rss_mb']:7.1f} MB", flush=True)
            print(f"  {model:<9} steps per second now / ref: {ratio:.3f} (median steps "
                  f"{now_s:.2f} s now, {ref_s:.2f} s ref)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"ref": args.ref, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
