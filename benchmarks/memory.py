"""Training memory against the number of images: peak RSS of whole ``kit.train`` runs.

Run: ``python -m benchmarks.memory [--data ../shared/data/sartorius] [--models cellpose maskrcnn]
[--train 38 152] [--held-out 8 40] [--json OUT]``.

For each model and each (train images, held-out images) pair, a competition directory with
that many images is made (symlinks to ``--data``'s PNGs, its train.csv rows). Images beyond
the smallest counts are copies of the first ones under new ids, so every run sees the same
images and the slope measures what grows with the count, not which images happen to be the
most expensive (a peak is a maximum over images: a few hard images raise it once). Then
``python -m kit.train MODEL --fold 1 --folds ... --config <the CPU config> --time-budget 0.05``
runs in a subprocess: data preparation, a few training steps (at least one epoch for Mask
R-CNN), the BatchNorm recalibration and SizeModel (Cellpose), validation and out-of-fold
prediction. Its peak resident set size is ``ru_maxrss`` of that process (``os.wait4``).
Printed per model: the peak RSS of every run and the slopes, MB per extra training image (at
the smallest held-out count) and MB per extra held-out image (at the smallest training count);
with ``--repeats R`` every measured pair runs R times (interleaved) and the slopes use the median
peaks: a peak varies by up to ~150 MB between identical runs.
Target: both slopes <= 0.5 MB per image. Cellpose's training targets are cached on disk
(``KIT_CACHE``, a fresh folder per benchmark): a first, unmeasured-for-the-slope run of the
smallest pair builds them (its peak and seconds are printed as the first-run cost), so the
measured runs compare alike. The load average is printed: the machine is shared.

``--livecell N [N ...]`` measures the LIVECell stage instead, at LIVECell's scale: synthetic
LIVECell (:mod:`kit.synth_livecell`, 128 x 160 images in LIVECell's COCO layout) of each count
goes through ``kit.train MODEL --livecell JSON --livecell-images DIR`` (reading the json, the
LIVECell stage for a few steps, then the Sartorius stage on a few of ``--data``'s images), and
the slope is MB per LIVECell image. Cellpose's LIVECell targets are built into the cache by a
first run at the largest count (its seconds: the first-run cost); every measured run reads them.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sartorius"
CPU_CONFIGS = {"cellpose": "cellpose_cpu.yaml", "maskrcnn": "maskrcnn_cpu_demo.yaml",
               "detectron2": "detectron2_cpu_real.yaml"}
TARGET_MB_PER_IMAGE = 0.5
# The few steps of the LIVECell check: one LIVECell epoch of a few batches, one Sartorius epoch.
LIVECELL_STEPS = {
    "maskrcnn": {"train": {"livecell_epochs": 1, "epochs": 1, "max_iters_per_epoch": 3,
                           "eval_max_images": 2}},
    "cellpose": {"train": {"livecell_epochs": 1, "epochs": 1, "nimg_per_epoch": 16},
                 "size_model": {"epochs": 1}},
    "detectron2": {"train": {"livecell_epochs": 1, "livecell_max_iter": 3, "eval_max_images": 2},
                   "detectron2": {"SOLVER.MAX_ITER": 3}},
}


def subset_dir(data: Path, train_ids: list[str], held_out_ids: list[str], out: Path) -> Path:
    """A competition directory at ``out`` with these images (train.csv rows copied, PNGs
    symlinked) and ``out/folds.csv``: fold 0 = train, fold 1 = held out. An id may be
    ``ORIGINAL~k``: a copy of ORIGINAL under a new id."""
    source = {i: i.split("~")[0] for i in [*train_ids, *held_out_ids]}
    rows: dict[str, list] = {}
    with open(data / "train.csv", newline="") as src:
        reader = csv.reader(src)
        header = next(reader)
        for row in reader:
            rows.setdefault(row[0], []).append(row)
    (out / "train").mkdir(parents=True)
    with open(out / "train.csv", "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(header)
        for new, orig in source.items():
            writer.writerows([new, *row[1:]] for row in rows[orig])
            (out / "train" / f"{new}.png").symlink_to((data / "train" / f"{orig}.png").resolve())
    with open(out / "folds.csv", "w") as f:
        f.write("id,fold\n" + "".join(f"{i},0\n" for i in train_ids)
                + "".join(f"{i},1\n" for i in held_out_ids))
    return out


def competition_ids(data: Path, need: int) -> list[str]:
    """The image ids of ``data``'s train.csv, in file order; a ValueError saying what is wrong
    when there is no train.csv or fewer than ``need`` images."""
    if not (data / "train.csv").is_file():
        raise ValueError(f"--data {data}: no train.csv (give a competition directory)")
    with open(data / "train.csv", newline="") as f:
        ids = list(dict.fromkeys(row[0] for row in list(csv.reader(f))[1:]))
    if len(ids) < need:
        raise ValueError(f"{data} has {len(ids)} images, the runs need {need}")
    return ids


def with_copies(base: list[str], n: int) -> list[str]:
    """``n`` ids: ``base`` repeated, the repeats named ``id~k``."""
    return [base[k % len(base)] + (f"~{k // len(base)}" if k >= len(base) else "") for k in range(n)]


def peak_rss_mb(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    proc.stderr.close()
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode


def measure(model: str, data: Path, n_train: int, n_held_out: int, ids: list[str],
            ids_split: tuple[int, int], work: Path, env: dict) -> dict:
    """One ``kit.train`` run: ``n_train`` training images, ``n_held_out`` held out (``ids`` =
    the base training ids then the base held-out ids; more than the base = copies)."""
    n_base_train, n_base_held = ids_split
    train_ids = with_copies(ids[:n_base_train], n_train)
    held = with_copies(ids[n_base_train:n_base_train + n_base_held], n_held_out)
    d = subset_dir(data, train_ids, held, work / f"{model}_{n_train}_{n_held_out}")
    out = d / "run"
    cmd = [sys.executable, "-m", "kit.train", model, "--data", str(d), "--folds", str(d / "folds.csv"),
           "--fold", "1", "--out", str(out), "--time-budget", "0.05", "--quiet"]
    if model in CPU_CONFIGS:
        cmd += ["--config", str(REPO / "kit" / "configs" / CPU_CONFIGS[model])]
    rss, seconds, code = peak_rss_mb(cmd, env)
    if code:
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return {"model": model, "n_train": n_train, "n_held_out": n_held_out, "peak_rss_mb": round(rss, 1),
            "seconds": round(seconds, 1), **logged(out)}


def logged(run: Path) -> dict:
    """What a run's train.log says: ``targets_built`` (Cellpose) and ``estimate_mb``, the peak
    RSS its memory plan estimated before it started."""
    found = {"targets_built": None, "estimate_mb": None}
    for line in (run / "train.log").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "cellpose_data":
            found["targets_built"] = event.get("targets_built")
        elif event["event"] == "memory_plan":
            found["estimate_mb"] = event.get("peak_mb")
    return found


def livecell_config(model: str, out: Path) -> Path:
    """``model``'s CPU config with :data:`LIVECELL_STEPS` merged in, written to ``out``."""
    import yaml

    doc = yaml.safe_load((REPO / "kit" / "configs" / CPU_CONFIGS[model]).read_text())
    for section, keys in LIVECELL_STEPS[model].items():
        doc.setdefault(section, {}).update(keys)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def livecell_subset(json_path: Path, n: int, out: Path) -> Path:
    """The first ``n`` images of a LIVECell json and their annotations, written to ``out``."""
    doc = json.loads(Path(json_path).read_text())
    images = doc["images"][:n]
    keep = {im["id"] for im in images}
    anns = {k: a for k, a in doc["annotations"].items() if a["image_id"] in keep}
    out.write_text(json.dumps({**doc, "images": images, "annotations": anns}, separators=(",", ":")))
    return out


def measure_livecell(model: str, competition: Path, lc_json: Path, lc_images: Path, n: int,
                     work: Path, env: dict) -> dict:
    """One ``kit.train`` run whose LIVECell stage reads the first ``n`` images of ``lc_json``."""
    tag = f"{model}_livecell_{n}"
    work.mkdir(parents=True, exist_ok=True)
    sub_json = livecell_subset(lc_json, n, work / f"{tag}.json")
    cmd = [sys.executable, "-m", "kit.train", model, "--data", str(competition),
           "--folds", str(competition / "folds.csv"), "--fold", "1", "--out", str(work / tag),
           "--livecell", str(sub_json), "--livecell-images", str(lc_images), "--quiet",
           "--config", str(livecell_config(model, work / f"{tag}.yaml"))]
    rss, seconds, code = peak_rss_mb(cmd, env)
    if code:
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return {"model": model, "n_livecell": n, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
            **logged(work / tag)}


def livecell_check(args, ids: list[str], env: dict, tmp: Path) -> dict:
    """The ``--livecell`` runs: ``{model: {"runs": [...], "mb_per_livecell_image", "first_run"}}``."""
    from kit.synth_livecell import JSON_NAME, make_livecell

    t0 = time.perf_counter()
    lc = make_livecell(tmp / "livecell", max(args.livecell), seed=0)
    print(f"synthetic LIVECell: {max(args.livecell)} images in {time.perf_counter() - t0:.0f} s")
    competition = subset_dir(args.data, ids[:8], ids[8:10], tmp / "sartorius")
    results = {}
    for model in args.models:
        if model not in LIVECELL_STEPS:
            print(f"  {model:<9} has no LIVECell stage: skipped")
            continue
        rows = []
        for k, n in enumerate([max(args.livecell), *sorted(args.livecell)]):
            row = measure_livecell(model, competition, lc / JSON_NAME, lc / "images", n,
                                   tmp / f"{model}_{k}", env)
            print(f"  {model:<9} {'(first run) ' if k == 0 else ''}LIVECell images {n:>5}: peak RSS "
                  f"{row['peak_rss_mb']:8.1f} MB (plan: {row['estimate_mb']} MB)  ({row['seconds']:.0f} s)",
                  flush=True)
            if k:
                rows.append(row)
            else:
                first = row
        lo, hi = rows[0], rows[-1]
        slope = (round((hi["peak_rss_mb"] - lo["peak_rss_mb"]) / (hi["n_livecell"] - lo["n_livecell"]), 3)
                 if hi["n_livecell"] > lo["n_livecell"] else None)
        results[model] = {"runs": rows, "mb_per_livecell_image": slope, "first_run": first}
    return results


def slopes(rows: list[dict]) -> dict:
    """MB per extra training image and per extra held-out image, from the runs of one model.
    Repeated runs of one (train, held-out) pair count by their median peak: two identical runs'
    peaks differ by up to ~150 MB (the allocator), which over a 114-image span is +-1 MB/image."""
    peaks: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        peaks.setdefault((r["n_train"], r["n_held_out"]), []).append(r["peak_rss_mb"])
    median = {pair: statistics.median(v) for pair, v in peaks.items()}
    min_h = min(h for _, h in median)
    min_t = min(t for t, _ in median)
    out = {}
    by_t = sorted(t for t, h in median if h == min_h)
    by_h = sorted(h for t, h in median if t == min_t)
    if len(by_t) > 1:
        out["mb_per_train_image"] = round((median[by_t[-1], min_h] - median[by_t[0], min_h])
                                          / (by_t[-1] - by_t[0]), 3)
    if len(by_h) > 1:
        out["mb_per_held_out_image"] = round((median[min_t, by_h[-1]] - median[min_t, by_h[0]])
                                             / (by_h[-1] - by_h[0]), 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="competition directory (train.csv + train/)")
    parser.add_argument("--models", nargs="+", default=["cellpose", "maskrcnn"])
    parser.add_argument("--train", type=int, nargs="+", default=[38, 152], help="training image counts")
    parser.add_argument("--held-out", type=int, nargs="+", default=[8, 40], help="held-out image counts")
    parser.add_argument("--livecell", type=int, nargs="+", default=None, metavar="N",
                        help="measure the LIVECell stage instead, at these synthetic LIVECell "
                             "image counts (e.g. 500 4000)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each measured pair; the slopes use each pair's median peak")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        ids = competition_ids(args.data, 10 if args.livecell else min(args.train) + min(args.held_out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if args.livecell:
        return _main_livecell(args, ids, env)
    pairs = [(min(args.train), min(args.held_out))]  # first run: builds the caches
    measured = [(t, min(args.held_out)) for t in sorted(args.train)]
    measured += [(min(args.train), h) for h in sorted(args.held_out)[1:]]
    pairs += [pair for _ in range(max(1, args.repeats)) for pair in measured]
    print(f"load average {os.getloadavg()[0]:.2f}; data {args.data} ({len(ids)} images)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="kit-bench-memory-") as tmp:
        env["KIT_CACHE"] = str(Path(tmp) / "cache")
        for model in args.models:
            rows = []
            for k, (n_train, n_held) in enumerate(pairs):
                row = measure(model, args.data, n_train, n_held, ids,
                              (min(args.train), min(args.held_out)), Path(tmp) / str(k), env)
                if k == 0:
                    results.setdefault("first_run", {})[model] = row
                else:
                    rows.append(row)
                print(f"  {model:<9} {'(first run) ' if k == 0 else ''}train {n_train:>4}  "
                      f"held-out {n_held:>3}: peak RSS "
                      f"{row['peak_rss_mb']:8.1f} MB (plan: {row['estimate_mb']} MB)  ({row['seconds']:.0f} s"
                      + (f", targets built {row['targets_built']}" if row["targets_built"] is not None else "")
                      + ")", flush=True)
            results[model] = {"runs": rows, **slopes(rows)}
    first = results.pop("first_run", {})
    print("\n| model | MB per training image | MB per held-out image | target |\n|---|---:|---:|---:|")
    ok = True
    for model, r in results.items():
        r["first_run"] = first.get(model)
        t, h = r.get("mb_per_train_image"), r.get("mb_per_held_out_image")
        ok &= all(v is None or v <= TARGET_MB_PER_IMAGE for v in (t, h))
        print(f"| {model} | {t if t is not None else '-'} | {h if h is not None else '-'} | "
              f"<= {TARGET_MB_PER_IMAGE} |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "target_mb_per_image": TARGET_MB_PER_IMAGE},
                                        indent=1))
    return 0 if ok else 1


def _main_livecell(args, ids: list[str], env: dict) -> int:
    print(f"load average {os.getloadavg()[0]:.2f}; Sartorius stage on 8 of {args.data}'s images")
    with tempfile.TemporaryDirectory(prefix="kit-bench-memory-") as tmp:
        env["KIT_CACHE"] = str(Path(tmp) / "cache")
        results = livecell_check(args, ids, env, Path(tmp))
    print("\n| model | MB per LIVECell image | target |\n|---|---:|---:|")
    ok = True
    for model, r in results.items():
        s = r["mb_per_livecell_image"]
        ok &= s is None or s <= TARGET_MB_PER_IMAGE
        print(f"| {model} | {s if s is not None else '-'} | <= {TARGET_MB_PER_IMAGE} |")
    if args.json:
        args.json.write_text(json.dumps({"livecell": results, "target_mb_per_image": TARGET_MB_PER_IMAGE},
                                        indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
