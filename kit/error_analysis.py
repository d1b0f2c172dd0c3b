"""What a model's errors are, per image: the metric's FN and FP at IoU > 0.5, explained.

At the metric's first threshold (IoU > 0.5, the one-to-one matching of
:func:`kit.metric.matched_pairs`) every unmatched mask gets one cause, checked in this order:

* a ground-truth (GT) mask that is not matched (FN) is
  ``merged`` when a prediction covers at least half of it and half of another GT mask
  (two cells found as one), ``split`` when two or more predictions each lie at least half
  inside it (one cell found as pieces), ``missed`` when no prediction reaches IoU 0.2 with it,
  and ``outline`` otherwise (found, but drawn too loosely or too tightly);
* a prediction that is not matched (FP) is ``merge`` when it covers half of two or more GT
  masks, ``piece`` when it lies at least half inside a GT mask that is split, ``spurious`` when
  it reaches IoU 0.2 with no GT mask (background, debris), and ``outline`` otherwise.

FN are also counted by size, relative to the image's median GT area: ``small`` (< 0.5x),
``medium``, ``large`` (> 2x). :class:`ErrorCounts` add up over images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from kit import metric

__all__ = ["ErrorCounts", "image_errors", "FOUND_IOU"]

FOUND_IOU = 0.2   # below this best IoU a mask counts as "missed" (GT) or "spurious" (prediction)
HALF = 0.5        # the share of a mask that "covers" / "lies inside" means


@dataclass
class ErrorCounts:
    """Counts of one image or summed over images (``+``); every field an int."""
    n_gt: int = 0
    n_pred: int = 0
    tp: int = 0
    fn_merged: int = 0
    fn_split: int = 0
    fn_missed: int = 0
    fn_outline: int = 0
    fn_small: int = 0
    fn_medium: int = 0
    fn_large: int = 0
    fp_merge: int = 0
    fp_piece: int = 0
    fp_spurious: int = 0
    fp_outline: int = 0

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                              for f in fields(self)})

    def as_dict(self) -> dict:
        """Every count, plus ``fn`` and ``fp``."""
        return {**asdict(self), "fn": self.fn, "fp": self.fp}


def image_errors(gt_rles, pred_rles, shape) -> ErrorCounts:
    """The :class:`ErrorCounts` of one image: GT and predicted masks as Kaggle RLE lists of an
    image of ``shape`` (H, W) (GT masks may overlap; predictions too)."""
    gt_rles, pred_rles = list(gt_rles), list(pred_rles)
    g_area, p_area, gi, pi, inter = metric.overlap_table(gt_rles, pred_rles, shape)
    n_gt, n_pred = len(gt_rles), len(pred_rles)
    gt_matched, pred_matched = np.zeros(n_gt, bool), np.zeros(n_pred, bool)
    if n_gt and n_pred:
        mg, mp = metric.matched_pairs(gt_rles, pred_rles, shape, 0.5)
        gt_matched[mg - 1] = True
        pred_matched[mp - 1] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (g_area[gi] + p_area[pi] - inter)
        covers = inter / g_area[gi] >= HALF      # the prediction covers half of the GT mask
        inside = inter / p_area[pi] >= HALF      # the prediction lies half inside the GT mask
    best_g = np.zeros(n_gt)
    best_p = np.zeros(n_pred)
    np.maximum.at(best_g, gi, iou)
    np.maximum.at(best_p, pi, iou)
    merge_pred = np.bincount(pi[covers], minlength=n_pred) >= 2
    split_gt = np.bincount(gi[inside], minlength=n_gt) >= 2
    merged_gt = np.zeros(n_gt, bool)
    merged_gt[gi[covers & merge_pred[pi]]] = True
    piece_pred = np.zeros(n_pred, bool)
    piece_pred[pi[inside & split_gt[gi]]] = True

    median = float(np.median(g_area)) if n_gt else 0.0
    out = ErrorCounts(n_gt=n_gt, n_pred=n_pred, tp=int(gt_matched.sum()))
    fn, fp = ~gt_matched, ~pred_matched
    out.fn_merged, out.fn_split, out.fn_missed, out.fn_outline = _first_cause(
        fn, merged_gt, split_gt, best_g < FOUND_IOU)
    out.fn_small, out.fn_large, out.fn_medium = _first_cause(
        fn, g_area < 0.5 * median, g_area > 2.0 * median)
    out.fp_merge, out.fp_piece, out.fp_spurious, out.fp_outline = _first_cause(
        fp, merge_pred, piece_pred, best_p < FOUND_IOU)
    return out


def _first_cause(unmatched: np.ndarray, *causes: np.ndarray) -> list[int]:
    """How many of the ``unmatched`` masks (bool (N,)) meet each of ``causes`` (bool (N,)) as
    the first one they meet, in order; the last count is of those that meet none."""
    left = unmatched.copy()
    counts = []
    for cause in causes:
        hit = left & cause
        counts.append(int(hit.sum()))
        left &= ~hit
    return counts + [int(left.sum())]
