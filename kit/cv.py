"""Score predictions against ground truth with the competition metric: ``python -m kit.cv``.

``python -m kit.cv --gt DIR_or_train.csv --pred submission_or_oof.csv [--json OUT] [--by cell_type]``

* ``--gt``: a ``train.csv``-format file, or a directory holding ``train.csv``. Only the
  CSV is read (no images), so out-of-fold scoring needs no pixels on disk.
* ``--pred``: an ``id,predicted`` CSV (submission or OOF), or a directory of label images
  ``<id>.png`` (8/16-bit) / ``<id>.npy`` (0 = background).
* ``--folds F --fold K`` restricts the GT to one fold (out-of-fold predictions).
* GT ids with no prediction count as all false negatives and are listed; a prediction id
  the GT does not know is an error (exit 2). Overlapping predicted masks are scored from the
  masks themselves (IoU is not taken from a painted label image).

Prints AP at each threshold 0.50..0.95 and MAP, overall and per cell type, with image counts;
``--by cell_type`` adds the pooled TP/FN/FP per threshold of each cell type.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kit import metric


class CVError(ValueError):
    """Bad ``--gt`` / ``--pred`` input."""


def _gt_csv(gt: Path) -> Path:
    path = gt / "train.csv" if gt.is_dir() else gt
    if not path.is_file():
        raise CVError(f"--gt {gt}: no such file" + (" (looked for train.csv in it)" if gt.is_dir() else ""))
    return path


def load_predictions(pred: Path) -> dict[str, object]:
    """``id -> RLE list`` (CSV) or ``id -> (H, W) label image`` (directory of PNG/NPY)."""
    if pred.is_dir():
        import cv2

        out: dict[str, object] = {}
        for f in sorted(pred.iterdir()):
            if f.suffix == ".npy":
                out[f.stem] = np.load(f)
            elif f.suffix == ".png":
                img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                if img is None or img.ndim != 2:
                    raise CVError(f"{f}: not a readable single-channel label PNG")
                out[f.stem] = img
        if not out:
            raise CVError(f"--pred {pred}: directory holds no <id>.png or <id>.npy label images")
        return out
    from kit.submission import read_prediction_rows

    return {k: [r for _, r in v] for k, v in read_prediction_rows(pred).items()}


def score_predictions(gt_records, preds: dict, progress: bool = True) -> tuple[list, list[str]]:
    """Score every GT image. Returns (ImageScore list in GT order, ids missing from preds)."""
    from tqdm import tqdm

    known = {r.id for r in gt_records}
    unknown = sorted(set(preds) - known)
    if unknown:
        raise CVError(f"{len(unknown)} predicted id(s) are not in the ground truth: {unknown[:10]}")
    scores, missing = [], []
    for rec in tqdm(gt_records, desc="scoring", unit="img", disable=not progress, file=sys.stderr):
        pred = preds.get(rec.id)
        if pred is None:
            missing.append(rec.id)
            pred = []
        try:
            scores.append(metric.image_score(list(rec.rles), pred, rec.shape,
                                             id=rec.id, cell_type=rec.cell_type))
        except ValueError as e:
            raise CVError(f"prediction for id {rec.id}: {e}") from None
    return scores, missing


def format_table(summary: metric.Summary, by_counts: bool = False) -> str:
    """The seed's table: AP per threshold, MAP and image counts, overall and per cell type."""
    types = list(summary.by_cell_type)
    cols = ["overall"] + types
    sums = [summary] + [summary.by_cell_type[t] for t in types]
    lines = [f"{'threshold':>9} " + " ".join(f"{c:>9}" for c in cols)]
    for k, t in enumerate(summary.thresholds):
        lines.append(f"{t:>9.2f} " + " ".join(f"{s.ap[k]:>9.4f}" for s in sums))
    lines.append(f"{'MAP':>9} " + " ".join(f"{s.map:>9.4f}" for s in sums))
    lines.append(f"{'images':>9} " + " ".join(f"{s.n_images:>9d}" for s in sums))
    if by_counts:
        for t, s in zip(types, sums[1:]):
            lines.append("")
            lines.append(f"{t}: pooled counts (TP / FN / FP; Prec. = TP/(TP+FP+FN))")
            lines.append(f"{'threshold':>9} {'TP':>7} {'FN':>7} {'FP':>7} {'Prec.':>7}")
            for k, th in enumerate(s.thresholds):
                d = s.tp[k] + s.fp[k] + s.fn[k]
                lines.append(f"{th:>9.2f} {s.tp[k]:>7d} {s.fn[k]:>7d} {s.fp[k]:>7d} "
                             f"{(s.tp[k] / d if d else 1.0):>7.4f}")
    return "\n".join(lines)


def result_json(summary: metric.Summary, scores, missing) -> dict:
    """The JSON document ``--json`` writes (keys documented in README)."""
    return {
        "map": summary.map,
        "thresholds": list(summary.thresholds),
        "ap": summary.ap.tolist(),
        "n_images": summary.n_images,
        "by_cell_type": {t: {"map": s.map, "n_images": s.n_images, "ap": s.ap.tolist(),
                             "tp": s.tp.tolist(), "fp": s.fp.tolist(), "fn": s.fn.tolist()}
                         for t, s in summary.by_cell_type.items()},
        "missing_ids": missing,
        "per_image": [{"id": s.id, "cell_type": s.cell_type, "score": s.score,
                       "n_true": s.n_true, "n_pred": s.n_pred} for s in scores],
    }


def write_json_atomic(obj, path: Path) -> None:
    from kit.atomic import atomic_open

    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.cv", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--gt", type=Path, required=True, help="train.csv-format GT file or a dir with train.csv")
    io.add_argument("--pred", type=Path, required=True, help="id,predicted CSV or dir of <id>.png/.npy labels")
    io.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    io.add_argument("--folds", type=Path, default=None, help="id,fold CSV: with --fold, score one fold")
    io.add_argument("--fold", type=int, default=None, help="score only GT images of this fold (OOF)")
    view = parser.add_argument_group("view")
    view.add_argument("--by", choices=["cell_type"], default=None,
                      help="add pooled TP/FN/FP tables per cell type")
    view.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from kit.atomic import check_writable
    from kit.data import read_train_csv

    try:
        if args.json is not None:
            check_writable(args.json, "--json output")
        gt_csv = _gt_csv(args.gt)
        gt = read_train_csv(gt_csv, check_images=False)
        if not gt:
            raise CVError(f"{gt_csv}: no image to score (the file has no data row)")
        if (args.fold is None) != (args.folds is None):
            raise CVError("--fold and --folds go together")
        if args.folds is not None:
            from kit.data import read_folds_csv

            folds = read_folds_csv(args.folds)
            gt = [r for r in gt if folds.get(r.id) == args.fold]
            if not gt:
                raise CVError(f"--fold {args.fold}: no GT image of that fold in {args.folds}")
        preds = load_predictions(args.pred)
        scores, missing = score_predictions(gt, preds, progress=not args.quiet)
        summary = metric.summarize(scores)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary, by_counts=args.by == "cell_type"))
    if missing:
        print(f"\n{len(missing)} GT image(s) had no prediction (scored as all FN): "
              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if args.json is not None:
        write_json_atomic(result_json(summary, scores, missing), args.json)
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
