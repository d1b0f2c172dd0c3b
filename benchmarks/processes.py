"""Training throughput in one process against two (torchrun, gloo) on this machine's CPU cores.

Run: ``python -m benchmarks.processes [--data ../shared/data/sartorius] [--models maskrcnn cellpose]
[--images 16] [--steps 12] [--json OUT]``.

Same images (the first ``--images`` of ``--data``'s train.csv for training, 2 more held out),
the model's CPU config with a fixed amount of training, and the same global batch in every
run:

- ``1 process x 1 thread``;
- ``1 process x N threads`` (N = the machine's cores): what one process makes of the cores;
- ``N processes x 1 thread`` (``torchrun --nproc_per_node N``, DistributedDataParallel on gloo).

Mask R-CNN: ``--steps`` iterations of a global batch of N images (N x 1 image per process); the
seconds of a step from ``train_iter.csv`` (median after the first 2). Cellpose: 3 epochs of
``--steps`` x 8 crops; an epoch's seconds / its steps from ``epochs.csv`` (median of epochs 2
and 3). Printed: seconds per step, images (crops) per second and the ratio to 1 process x N
threads, measured in one run; the load average (the machine may be shared).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.memory import DEFAULT_DATA, REPO, competition_ids, subset_dir

CONFIGS = {"maskrcnn": "maskrcnn_cpu_real.yaml", "cellpose": "cellpose_cpu.yaml"}


CORES = os.cpu_count() or 1


def config_file(model: str, steps: int, out: Path) -> tuple[Path, int]:
    """The model's CPU config with a fixed amount of training and the same global batch for
    every run (Mask R-CNN: one image per core; Cellpose: 8 crops); ``(path, images per step)``."""
    doc = yaml.safe_load((REPO / "kit" / "configs" / CONFIGS[model]).read_text())
    train = doc.setdefault("train", {})
    if model == "maskrcnn":
        train.update(epochs=1, batch_size=CORES, accumulate=1, max_iters_per_epoch=steps,
                     eval_max_images=1, num_workers=0)
        per_step = CORES
    else:
        train.update(epochs=3, batch_size=8, nimg_per_epoch=8 * steps, eval_every=0, save_every=3)
        doc.setdefault("size_model", {})["enabled"] = False
        per_step = 8
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out, per_step


def step_seconds(model: str, run: Path) -> float:
    if model == "maskrcnn":
        with open(run / "train_iter.csv", newline="") as f:
            secs = [float(r["seconds"]) for r in csv.DictReader(f)]
        return statistics.median(secs[2:] or secs)
    with open(run / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per = [float(r["seconds"]) / max(1, int(r["n_crops"]) // 8) for r in rows[1:] or rows]
    return statistics.median(per)


def measure(model: str, data: Path, processes: int, threads: int, steps: int, work: Path) -> dict:
    cfg, per_step = config_file(model, steps, work / f"{model}_{processes}x{threads}.yaml")
    out = work / f"{model}_{processes}x{threads}"
    args = ["-m", "kit.train", model, "--data", str(data), "--folds", str(data / "folds.csv"),
            "--fold", "1", "--out", str(out), "--config", str(cfg), "--val-fraction", "0", "--quiet"]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(processes), *args] if processes > 1 else [sys.executable, *args])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    s = step_seconds(model, out)
    return {"model": model, "processes": processes, "threads": threads, "step_s": round(s, 3),
            "images_per_s": round(per_step / s, 3), "images_per_step": per_step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.processes", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", nargs="+", default=["maskrcnn", "cellpose"], choices=sorted(CONFIGS))
    parser.add_argument("--images", type=int, default=16, help="training images")
    parser.add_argument("--steps", type=int, default=12, help="training steps (Cellpose: per epoch)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if CORES < 2:
        print("error: one CPU core: nothing to compare", file=sys.stderr)
        return 2
    try:
        ids = competition_ids(args.data, args.images + 2)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()[0]:.2f}; {CORES} cores; {args.images} training images of {args.data}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kit-bench-processes-") as tmp:
        data = subset_dir(args.data, ids[:args.images], ids[args.images:args.images + 2], Path(tmp) / "data")
        for model in args.models:
            runs = [measure(model, data, p, t, args.steps, Path(tmp))
                    for p, t in ((1, 1), (1, CORES), (CORES, 1))]
            base = runs[1]["images_per_s"]
            for r in runs:
                r["vs_one_process"] = round(r["images_per_s"] / base, 3)
                print(f"  {model:<9} {r['processes']} process(es) x {r['threads']} thread(s): "
                      f"{r['step_s']:.2f} s per step of {r['images_per_step']} images, "
                      f"{r['images_per_s']:.2f} images/s ({r['vs_one_process']:.2f}x one process "
                      f"x {CORES} threads)", flush=True)
            rows += runs
    if args.json:
        args.json.write_text(json.dumps({"cores": CORES, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
