"""TP/FP/FN outline figures of one image: GT and predicted masks matched at IoU > 0.5.

:func:`make_overlay` draws the outlines on the image (TP green, FN blue, FP red on top);
:func:`save_figure` writes one titled figure, :func:`save_grid` several. Layout of a single
figure (tests rely on it): the image, upscaled by the integer :func:`figure_scale` with
nearest-neighbour, fills the figure below a white title band of ``TITLE_PX`` pixels, so image
pixel (r, c) is PNG pixel (TITLE_PX + r*s .. , c*s ..). The command line is :mod:`kit.viz`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kit import metric
from kit.atomic import write_atomic
from kit.mask_pixels import mask_crops, mask_pixels

__all__ = ["TP_COLOR", "FP_COLOR", "FN_COLOR", "TITLE_PX", "Overlay", "match_masks",
           "draw_outlines", "make_overlay", "figure_scale", "save_figure", "save_grid", "pyplot",
           "png_bytes"]

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


def save_grid(overlays: Sequence[Overlay], path, ncols: int = 3, title: str = "worst images") -> Path:
    """Write a grid PNG of overlays (e.g. the worst K images), titled like the single figures,
    under ``title`` and the colour key."""
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
    fig.suptitle(f"{title} (green TP, red FP, blue FN at IoU > 0.5)", fontsize=10)
    fig.tight_layout()
    return write_atomic(Path(path), png_bytes(fig))


# --------------------------------------------------------------------------------------------
# Driver


