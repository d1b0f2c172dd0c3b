"""A trained detectron2 model against its torchvision port, on held-out real images.

Run: ``python -m benchmarks.detectron2_port --model DIR --data DIR --folds CSV --fold K
[--n N] [--json OUT]`` (needs detectron2: ``make detectron2``).

Three engines predict the same images with the model's own post-processing (every image with
its true cell type), one after the other in this process:

* ``detectron2``: the model folder as trained (:class:`kit.models.d2.model.Detectron2Model`);
* ``port``: :func:`kit.models.d2.port.torchvision_port` (``anchor_rule: detectron2``);
* ``port, torchvision anchors``: the same with torchvision's own anchor generator (corners
  rounded, P6 stride = padded size // feature size) -- what the port would score without the
  kit's detectron2 anchor rule.

Printed per engine: MAP on the images (overall and per cell type, :mod:`kit.metric`), the
MAP of its label images against detectron2's taken as the truth (agreement, 1.000 = the same
cells), and seconds per image (wall, ``time.perf_counter``; the load average is printed: the
machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

ENGINES = ("detectron2", "port", "port, torchvision anchors")


def run(model_dir: Path, records, progress: bool = True) -> dict:
    """``{engine: {"map", "by_cell_type", "agreement", "seconds_per_image"}}`` on ``records``."""
    from kit import metric
    from kit.models import load_model
    from kit.models.d2.port import torchvision_port
    from kit.rle import encode_labels

    d2 = load_model(model_dir)
    models = {"detectron2": d2, "port": torchvision_port(d2),
              "port, torchvision anchors": torchvision_port(d2, anchor_rule="torchvision")}
    scores = {e: [] for e in ENGINES}
    agree = {e: [] for e in ENGINES}
    seconds = {e: 0.0 for e in ENGINES}
    for rec in tqdm(records, desc="images", disable=not progress):
        image = rec.load_image()
        truth = None
        for engine in ENGINES:
            t0 = time.perf_counter()
            labels = models[engine].predict(image, rec.cell_type)
            seconds[engine] += time.perf_counter() - t0
            scores[engine].append(metric.image_score(list(rec.rles), labels, rec.shape, id=rec.id,
                                                     cell_type=rec.cell_type))
            if truth is None:
                truth = encode_labels(labels)
            agree[engine].append(metric.image_score(truth, labels, rec.shape, id=rec.id,
                                                    cell_type=rec.cell_type))
    out = {}
    for engine in ENGINES:
        summary = metric.summarize(scores[engine])
        out[engine] = {"map": float(summary.map),
                       "by_cell_type": {k: float(v.map) for k, v in summary.by_cell_type.items()},
                       "agreement": float(metric.summarize(agree[engine]).map),
                       "seconds_per_image": seconds[engine] / max(len(records), 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detectron2_port",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a detectron2 model folder")
    ap.add_argument("--data", type=Path, required=True, help="competition directory (train.csv, train/)")
    ap.add_argument("--folds", type=Path, required=True, help="id,fold CSV")
    ap.add_argument("--fold", type=int, required=True, help="the held-out fold to predict")
    ap.add_argument("--n", type=int, default=0, help="first N images of the fold (0 = all)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from kit.data import read_competition_dir, read_folds_csv, split_by_fold

    records = read_competition_dir(args.data).train
    _, held_out = split_by_fold(records, read_folds_csv(args.folds), args.fold, args.folds)
    held_out = held_out[: args.n or None]
    print(f"{len(held_out)} images of fold {args.fold}; load average {os.getloadavg()[0]:.2f}")
    res = run(args.model, held_out, progress=not args.quiet)
    types = sorted({t for r in res.values() for t in r["by_cell_type"]})
    print("| engine | MAP | " + " | ".join(types) + " | agreement with detectron2 | s/img |")
    print("|---|---:|" + "---:|" * len(types) + "---:|---:|")
    for engine, r in res.items():
        cells = " | ".join(f"{r['by_cell_type'].get(t, float('nan')):.3f}" for t in types)
        print(f"| {engine} | {r['map']:.3f} | {cells} | {r['agreement']:.3f} | "
              f"{r['seconds_per_image']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"n_images": len(held_out), "engines": res}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
