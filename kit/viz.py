"""Prediction figures: GT and predicted outlines on the image, ``python -m kit.viz``.

``python -m kit.viz --gt DIR_or_train.csv --pred submission_or_oof.csv [--ids ID ...]
[--worst K] [--images DIR] --out OUT``

* ``--gt``: a train.csv-format file or a directory holding ``train.csv``; ``--pred``: an
  ``id,predicted`` CSV (submission or out-of-fold). A GT id without prediction rows has no
  predicted instance; a predicted id the GT does not know is an error.
* ``--images`` defaults to ``DIR/train`` for a directory and to ``<csv folder>/train`` for a
  CSV (the :func:`kit.data.read_train_csv` convention); images are ``<id>.png``.
* Per image, ``OUT/<id>.png``: the grayscale image (contrast-stretched) with outlines coloured
  by the match at IoU > 0.5 (:func:`kit.metric.iou_pairs`): TP green (both the GT and the
  predicted outline), FP (unmatched prediction) red, FN (unmatched GT) blue; the title gives
  id, cell type, the image's score (:func:`kit.metric.image_score`) and TP/FP/FN at 0.5.
* ``--worst K`` also draws the K lowest-scoring images among the predicted ids (the OOF set)
  into ``OUT/worst_<K>.png`` (a grid) and writes their single figures. Without ``--ids`` and
  ``--worst``, K = 6. ``OUT/scores.csv`` lists every scored image, lowest score first.

The figures are :mod:`kit.overlay`'s (layout there). Files are written to a temp file and
renamed. Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Sequence

from kit import metric
from kit.atomic import write_atomic
from kit.overlay import (FN_COLOR, FP_COLOR, TITLE_PX, TP_COLOR, Overlay, draw_outlines,
                         figure_scale, make_overlay, match_masks, png_bytes, pyplot, save_figure,
                         save_grid)

# the figures are kit.overlay's; their names stay importable from here
__all__ = ["TP_COLOR", "FP_COLOR", "FN_COLOR", "TITLE_PX", "Overlay", "match_masks",
           "draw_outlines", "make_overlay", "figure_scale", "save_figure", "save_grid", "pyplot",
           "png_bytes", "main"]


def _scores_csv(scores: Sequence[metric.ImageScore]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("id", "cell_type", "score", "n_true", "n_pred", "tp_50", "fp_50", "fn_50"))
    for s in scores:
        w.writerow((s.id, s.cell_type or "", f"{s.score:.6f}", s.n_true, s.n_pred,
                    int(s.tp[0]), int(s.fp[0]), int(s.fn[0])))
    return buf.getvalue().encode()


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.viz", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io_ = parser.add_argument_group("inputs and outputs")
    io_.add_argument("--gt", type=Path, required=True,
                     help="train.csv-format GT file or a dir holding train.csv")
    io_.add_argument("--pred", type=Path, required=True, help="id,predicted CSV (submission/OOF)")
    io_.add_argument("--images", type=Path, default=None,
                     help="dir of <id>.png images (default: DIR/train, or <csv folder>/train)")
    io_.add_argument("--out", type=Path, required=True, help="output directory")
    sel = parser.add_argument_group("which images")
    sel.add_argument("--ids", nargs="+", default=[], metavar="ID", help="draw these images")
    sel.add_argument("--worst", type=int, default=None, metavar="K",
                     help="draw the K lowest-scoring predicted images and a grid of them "
                          "(default 6 when --ids is not given)")
    sel.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from kit.data import read_train_csv
    from kit.submission import read_predictions

    try:
        if args.worst is not None and args.worst < 1:
            raise ValueError(f"--worst must be >= 1, got {args.worst}")
        gt_csv = args.gt / "train.csv" if args.gt.is_dir() else args.gt
        if not gt_csv.is_file():
            raise ValueError(f"--gt {args.gt}: no such file" +
                             (" (looked for train.csv in it)" if args.gt.is_dir() else ""))
        images_dir = args.images if args.images is not None else gt_csv.parent / "train"
        if not images_dir.is_dir():
            raise ValueError(f"--images {images_dir}: no such directory")
        gt = {r.id: r for r in read_train_csv(gt_csv, images_dir, check_images=False)}
        preds = read_predictions(args.pred)
        unknown = sorted(set(preds) - set(gt))
        if unknown:
            raise ValueError(f"--pred {args.pred}: {len(unknown)} id(s) are not in the ground "
                             f"truth {gt_csv}: {unknown[:10]}")
        bad = [i for i in args.ids if i not in gt]
        if bad:
            raise ValueError(f"--ids: not in the ground truth {gt_csv}: {bad}")
        worst = args.worst if args.worst is not None else (None if args.ids else 6)
        scores = []
        for id_ in tqdm(list(preds), desc="scoring", unit="img", file=sys.stderr,
                        disable=args.quiet):
            r = gt[id_]
            try:
                scores.append(metric.image_score(list(r.rles), preds[id_], r.shape, id=id_,
                                                 cell_type=r.cell_type))
            except ValueError as e:
                raise ValueError(f"--pred {args.pred}, id {id_}: {e}") from None
        scores.sort(key=lambda s: (s.score, s.id))
        worst_ids = [s.id for s in scores[:worst]] if worst else []
        draw = list(dict.fromkeys([*args.ids, *worst_ids]))
        overlays = {}
        for id_ in tqdm(draw, desc="figures", unit="img", file=sys.stderr, disable=args.quiet):
            r = gt[id_]
            overlays[id_] = make_overlay(r.load_image(), r.rles, preds.get(id_, []),
                                         id=id_, cell_type=r.cell_type)
            save_figure(overlays[id_], args.out / f"{id_}.png")
        if worst_ids:
            grid = [make_overlay(gt[i].load_image(), gt[i].rles, preds.get(i, []), thickness=2,
                                 id=i, cell_type=gt[i].cell_type) for i in worst_ids]
            save_grid(grid, args.out / f"worst_{worst}.png")
        write_atomic(args.out / "scores.csv", _scores_csv(scores))
    except ValueError as e:  # DataError, SubmissionError, RLEError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for id_, ov in overlays.items():
        print(f"{id_}: MAP {ov.score.score:.4f}  TP {ov.tp}  FP {ov.fp}  FN {ov.fn}"
              f"  -> {args.out / (id_ + '.png')}")
    if worst_ids:
        print(f"wrote {args.out / f'worst_{worst}.png'} ({len(worst_ids)} image(s))")
    print(f"wrote {args.out / 'scores.csv'} ({len(scores)} image(s) scored)")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
