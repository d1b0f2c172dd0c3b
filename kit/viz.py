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

Layout of a single figure (tests rely on it): the image, upscaled by the integer
:func:`figure_scale` with nearest-neighbour, fills the figure below a white title band of
``TITLE_PX`` pixels, so image pixel (r, c) is PNG pixel (TITLE_PX + r*s .. , c*s ..).
Files are written to a temp file and renamed. Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kit import metric
from kit.atomic import write_atomic
from kit.eda import mask_crops, mask_pixels

__all__ = ["TP_COLOR", "FP_COLOR", "FN_COLOR", "TITLE_PX", "Overlay", "match_masks",
           "draw_outlines", "make_overlay", "figure_scale", "save_figure", "save_grid", "main"]

TP_COLOR = (0, 230, 0)  # RGB
FP_COLOR = (255, 30, 30)
FN_COLOR = (30, 110, 255)
TITLE_PX = 44  # height of the title band of a single figure, in PNG pixels
_MIN_FIG_WIDTH = 480  # small images are upscaled (integer factor) to at least this width


@dataclass(frozen=True)
class Overlay:
    """An (H, W, 3) uint8 RGB overlay and the numbers of its title."""

    rgb: np.ndarray
    score: metric.ImageScore
    tp: int  # matched pairs at IoU > 0.5
    fp: int
    fn: int


def match_masks(gt_rles: Sequence[str], pred_rles: Sequence[str], shape,
                iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(gt_matched (N,) bool, pred_matched (M,) bool): the masks of the metric's one-to-one
    matching at IoU > ``iou`` (a duplicate of a matched mask stays unmatched)."""
    g, p = metric.matched_pairs(list(gt_rles), list(pred_rles), shape, iou)
    gm, pm = np.zeros(len(gt_rles), bool), np.zeros(len(pred_rles), bool)
    gm[g - 1] = True  # indices are 1-based list positions
    pm[p - 1] = True
    return gm, pm


def draw_outlines(canvas: np.ndarray, rles: Sequence[str], colors: Sequence[tuple],
                  thickness: int = 1) -> np.ndarray:
    """Draw the outline (outer and hole boundaries) of every mask onto ``canvas`` in place.

    canvas: (H, W, 3) uint8; rles: Kaggle RLEs of that image; colors: one RGB tuple per RLE.
    Outlines come from ``cv2.findContours`` on each mask's bounding-box crop.
    """
    import cv2

    h, w = canvas.shape[:2]
    ann, pix = mask_pixels(rles, (h, w))
    for k, y0, x0, crop in mask_crops(ann, pix, len(rles), w):
        padded = np.pad(crop, 1).astype(np.uint8)
        contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colors[k]), thickness,
                         offset=(x0 - 1, y0 - 1))
    return canvas


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, stretched between the 0.5 and 99.5 percentiles and
    kept to 25..200 so that coloured outlines stand out."""
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.size else (0, 1)
    g = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)
    g = (25 + 175 * g).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def make_overlay(image: np.ndarray, gt_rles: Sequence[str], pred_rles: Sequence[str],
                 thickness: int = 1, id: str = "", cell_type: str | None = None) -> Overlay:
    """Overlay of one image: (H, W) uint8 image, GT and predicted Kaggle RLEs of its shape.

    Draw order: TP outlines (green), then FN (blue), then FP (red) on top.
    """
    shape = image.shape
    score = metric.image_score(list(gt_rles), list(pred_rles), shape, id=id, cell_type=cell_type)
    gm, pm = match_masks(gt_rles, pred_rles, shape)
    rgb = _gray_rgb(image)
    for rles, matched in ((gt_rles, gm), (pred_rles, pm)):
        tp = [r for r, m in zip(rles, matched) if m]
        draw_outlines(rgb, tp, [TP_COLOR] * len(tp), thickness)
    fn = [r for r, m in zip(gt_rles, gm) if not m]
    draw_outlines(rgb, fn, [FN_COLOR] * len(fn), thickness)
    fp = [r for r, m in zip(pred_rles, pm) if not m]
    draw_outlines(rgb, fp, [FP_COLOR] * len(fp), thickness)
    return Overlay(rgb, score, int(gm.sum()), len(fp), len(fn))


def figure_scale(width: int) -> int:
    """Integer upscale factor of a single figure: 1 for competition images (704 px wide)."""
    return max(1, math.ceil(_MIN_FIG_WIDTH / width))


def _title(ov: Overlay) -> tuple[str, str]:
    s = ov.score
    return (f"{s.id}  ·  {s.cell_type or 'unknown type'}  ·  MAP {s.score:.3f}",
            f"IoU > 0.5:  TP {ov.tp} (green)  ·  FP {ov.fp} (red)  ·  FN {ov.fn} (blue)  ·  "
            f"{s.n_true} GT / {s.n_pred} pred")


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(ov: Overlay, path) -> Path:
    """Write the single figure of an overlay (layout in the module docstring) as PNG."""
    plt = pyplot()
    h, w = ov.rgb.shape[:2]
    s = figure_scale(w)
    img = np.repeat(np.repeat(ov.rgb, s, axis=0), s, axis=1)
    dpi = 100
    fig = plt.figure(figsize=(w * s / dpi, (h * s + TITLE_PX) / dpi), dpi=dpi)
    total = h * s + TITLE_PX
    ax = fig.add_axes((0, 0, 1, h * s / total))
    ax.imshow(img, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    line1, line2 = _title(ov)
    fig.text(0.5, 1 - 6 / total, line1, ha="center", va="top", fontsize=10, weight="bold")
    fig.text(0.5, 1 - 25 / total, line2, ha="center", va="top", fontsize=8)
    return write_atomic(Path(path), png_bytes(fig))


def save_grid(overlays: Sequence[Overlay], path, ncols: int = 3) -> Path:
    """Write a grid PNG of overlays (e.g. the worst K images), titled like the single figures."""
    plt = pyplot()
    n = max(len(overlays), 1)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    h, w = overlays[0].rgb.shape[:2] if overlays else (1, 1)
    panel_w = 5.0
    fig_h = nrows * (panel_w * h / w + 0.55)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, fig_h), dpi=100,
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, ov in zip(axes.ravel(), overlays):
        ax.imshow(ov.rgb, interpolation="antialiased")
        line1 = _title(ov)[0]
        ax.set_title(f"{line1}\nTP {ov.tp} · FP {ov.fp} · FN {ov.fn}", fontsize=8)
    fig.suptitle("worst images (green TP, red FP, blue FN at IoU > 0.5)", fontsize=10)
    fig.tight_layout()
    return write_atomic(Path(path), png_bytes(fig))


# --------------------------------------------------------------------------------------------
# Driver


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
