"""The competition metric, exactly: mean over thresholds of TP / (TP + FP + FN), per image.

For each image and each threshold ``t`` in 0.50, 0.55, ..., 0.95 a (true, predicted) pair is
a candidate when its IoU is **strictly greater** than ``t`` (compared exactly, in integers:
``20 * intersection > 20 * t * union``), and

    TP(t) = the size of a maximum ONE-TO-ONE matching of the candidates (every true and every
            predicted instance in at most one pair),
    FP(t) = n_pred - TP(t),   FN(t) = n_true - TP(t),
    score(t) = TP(t) / (TP(t) + FP(t) + FN(t)),   image score = mean_t score(t),
    dataset score = mean over images (the Kaggle leaderboard number).

Why a matching: the competition page does not say what happens when masks of one side
overlap. Real train.csv masks do overlap, and a few images hold duplicate masks (IoU 1.0), so
one predicted mask can clear a threshold with two true ones. Counting every candidate pair
would then make FP or FN negative and scores exceed 1 (a prediction written twice would
*raise* the score); a one-to-one matching keeps every count a count and every score in
[0, 1]. When no instance has two candidates — always so when neither side overlaps itself,
since two disjoint masks cannot both have IoU > 0.5 with a third — the candidates are the
matching and are counted as they are; only otherwise is a matching computed, on the few
candidate pairs (:func:`kit._metric_numba.match_counts`).

Empty cases (the convention of this module, tested): no true and no predicted instance
gives score(t) = 1 at every t; exactly one side empty gives 0. Zero-area masks (an empty
RLE, an all-False stack slice) are not instances.

Inputs, per side (:func:`image_score`): an (H, W) integer label image (0 = background,
labels need not be sequential), an (N, H, W) bool stack (masks may overlap: IoU comes from
the masks themselves), or a list of Kaggle RLE strings (give ``shape``; may overlap).

Layers: :func:`image_score` (one image) -> :func:`score_images` (a lazy iterable of
pairs) -> :func:`summarize` (AP per threshold, MAP, by cell type).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from kit import _metric_numba as _k
from kit import rle as _rle

THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(_k.N_THRESHOLDS))


@dataclass(frozen=True)
class ImageScore:
    """Result for one image. ``tp``/``fp``/``fn``: (10,) int64 counts at each of THRESHOLDS."""

    tp: np.ndarray
    n_true: int
    n_pred: int
    id: str = ""
    cell_type: str | None = None

    @property
    def fp(self) -> np.ndarray:
        """(10,) int64 predicted instances without a match at each threshold."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> np.ndarray:
        """(10,) int64 true instances without a match at each threshold."""
        return self.n_true - self.tp

    @property
    def per_threshold(self) -> np.ndarray:
        """(10,) float64 score(t) = TP / (TP + FP + FN); 1.0 where both sides are empty."""
        denom = self.tp + self.fp + self.fn
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)

    @property
    def score(self) -> float:
        """The image score: mean of :attr:`per_threshold`."""
        return float(self.per_threshold.mean())

    def to_dict(self) -> dict:
        return {"id": self.id, "cell_type": self.cell_type, "score": self.score,
                "n_true": self.n_true, "n_pred": self.n_pred,
                "tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist()}


# ---------------------------------------------------------------------------------------------
# Inputs -> run-length or label form


def _as_runs(x, shape, name):
    """(ptr, starts, lengths, shape) of a stack or an RLE list (see kit.rle.parse_runs)."""
    if isinstance(x, np.ndarray) and x.ndim == 3:
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{name} stack has image shape {x.shape[1:]}, expected {tuple(shape)}")
        from kit import _rle_numba

        flat = np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1] * x.shape[2]) != 0)
        ptr, starts, lengths = _rle_numba.stack_runs(flat)
        return ptr, starts, lengths, tuple(x.shape[1:])
    if isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a 2-D label image, a 3-D bool stack or a list of RLE "
                         f"strings, got an array of shape {x.shape}")
    if shape is None:
        raise ValueError(f"{name} is a list of RLE strings: pass shape=(H, W)")
    ptr, starts, lengths = _rle.parse_runs(list(x), shape)
    return ptr, starts, lengths, tuple(int(s) for s in shape)


def _label_runs(labels, name):
    _, ptr, starts, lengths = _rle._label_runs(labels, name)
    return ptr, starts, lengths, labels.shape


def _is_label_image(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 2


def _plain_label_pair(gt, pred, shape) -> bool:
    """The common case, recognised quickly: two C-contiguous (H, W) integer arrays of one
    shape and no ``shape`` argument (nothing more to check)."""
    return (shape is None and type(gt) is np.ndarray and type(pred) is np.ndarray
            and gt.ndim == 2 and gt.shape == pred.shape and gt.dtype.kind in "iu"
            and pred.dtype.kind in "iu" and gt.flags.c_contiguous and pred.flags.c_contiguous)


def _checked_label_pair(gt, pred, shape):
    """Both label images checked, same shape, flattened: (gt (N,), pred (N,), shape)."""
    if _plain_label_pair(gt, pred, shape):
        return gt.reshape(-1), pred.reshape(-1), gt.shape
    g = _rle.check_label_image(gt, "gt")
    p = _rle.check_label_image(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt ({g.shape}) and pred ({p.shape}) have different shapes")
    if shape is not None and tuple(shape) != g.shape:
        raise ValueError(f"shape {tuple(shape)} does not match the label images {g.shape}")
    return g.reshape(-1), p.reshape(-1), g.shape


def _compacted(g, p):
    """Both flat label images with labels renumbered 0..K, and each one's original label of
    every compact label: (g, p, g_values, p_values). Negative labels: ValueError."""
    for x, name in ((g, "gt"), (p, "pred")):
        if np.issubdtype(x.dtype, np.signedinteger) and x.size and x.min() < 0:
            raise _rle.negative_labels_error(x, name)
    (gc, g_values), (pc, p_values) = _rle.compact_labels(g), _rle.compact_labels(p)
    return gc, pc, g_values, p_values


def _pairs(gt, pred, shape):
    """(a, b, inter, area_a, area_b, n_true, n_pred) for any accepted input pair.

    a, b, inter: (P,) int64 overlapping pairs (index 0 = background, on one side at most) and
    their intersection in pixels; area_a, area_b: (P,) areas of instance a[q] / b[q];
    n_true, n_pred: instances with a non-zero area on each side.
    """
    if _is_label_image(gt) and _is_label_image(pred):
        g, p, _ = _checked_label_pair(gt, pred, shape)
        out = _k.label_pairs(g, p)
        if _k.keys_fit(out[-1]):
            return out[:-1]
        gc, pc, g_values, p_values = _compacted(g, p)
        a, b, c, area_a, area_b, n_true, n_pred, _ = _k.label_pairs(gc, pc)
        return g_values[a], p_values[b], c, area_a, area_b, n_true, n_pred
    if shape is None:  # a list of RLEs takes its shape from an array on the other side
        shape = next((x.shape[-2:] for x in (gt, pred) if isinstance(x, np.ndarray)), None)
    ga = _label_runs(_rle.check_label_image(gt, "gt"), "gt") if _is_label_image(gt) else \
        _as_runs(gt, shape, "gt")
    pa = _label_runs(_rle.check_label_image(pred, "pred"), "pred") if _is_label_image(pred) else \
        _as_runs(pred, shape, "pred")
    if ga[3] != pa[3]:
        raise ValueError(f"gt ({ga[3]}) and pred ({pa[3]}) have different shapes")
    a, b, c = _k.run_overlaps(ga[0], ga[1], ga[2], pa[0], pa[1], pa[2])
    area_a, area_b = _k.run_areas(ga[0], ga[2]), _k.run_areas(pa[0], pa[2])
    return (a, b, c, area_a[a], area_b[b], int(np.count_nonzero(area_a[1:])),
            int(np.count_nonzero(area_b[1:])))


# ---------------------------------------------------------------------------------------------
# Public API


def image_score(gt, pred, shape=None, *, id: str = "", cell_type: str | None = None) -> ImageScore:
    """Score one image. ``gt``/``pred``: label image, bool stack or RLE list (see module doc).

    ``shape`` (H, W) is needed when both sides are RLE lists; otherwise it is checked.

    >>> a = np.zeros((4, 4), np.int32); a[:2, :2] = 7
    >>> image_score(a, a).score
    1.0
    """
    if _is_label_image(gt) and _is_label_image(pred):  # the hot path: one kernel call
        g, p, _ = _checked_label_pair(gt, pred, shape)
    else:
        a, b, c, area_a, area_b, n_true, n_pred = _pairs(gt, pred, shape)
        return ImageScore(_k.match_counts(a, b, c, area_a, area_b), n_true, n_pred, id, cell_type)
    tp, n_true, n_pred, labels = _k.score_labels(g, p)
    if not _k.keys_fit(labels):
        tp, n_true, n_pred, _ = _k.score_labels(*_compacted(g, p)[:2])
    return ImageScore(tp, n_true, n_pred, id, cell_type)


def iou_pairs(gt, pred, shape=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping instance pairs: (gt_index, pred_index, iou), IoU > 0 only.

    Indices are labels for label images and 1-based list positions for stacks/RLE lists.
    """
    a, b, c, area_a, area_b, _, _ = _pairs(gt, pred, shape)
    keep = (a > 0) & (b > 0)
    a, b, c = a[keep], b[keep], c[keep]
    iou = c / (area_a[keep] + area_b[keep] - c)
    order = np.lexsort((b, a))
    return a[order], b[order], iou[order]


def matched_pairs(gt, pred, shape=None, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The (gt_index, pred_index) pairs of a maximum one-to-one matching at ``threshold`` (one
    of :data:`THRESHOLDS`), as :func:`image_score` counts them: ``len`` = its TP there.

    Indices as in :func:`iou_pairs`; sorted by gt index. Which of several equally large
    matchings is returned is unspecified (only their size is the metric's).
    """
    t = round(float(threshold), 2)
    if t not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {list(THRESHOLDS)}, got {threshold!r}")
    k = THRESHOLDS.index(t)
    a, b, c, area_a, area_b, _, _ = _pairs(gt, pred, shape)
    keep = (a > 0) & (b > 0) & (20 * c > (10 + k) * (area_a + area_b - c))
    a, b = a[keep], b[keep]
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    match = _k.matching(ia.astype(np.int64), ib.astype(np.int64), ua.size, ub.size)
    left = np.flatnonzero(match >= 0)
    return ua[left], ub[match[left]]


def overlap_table(gt, pred, shape=None) -> tuple[np.ndarray, ...]:
    """Areas and intersections of two instance sets given as RLE lists or 3-D stacks.

    Returns ``(gt_area, pred_area, gi, pi, inter)``: ``gt_area`` (G,) and ``pred_area`` (P,)
    int64 pixel counts of every instance (0-based, list order), and for every pair with a
    non-empty intersection its 0-based indices ``gi``, ``pi`` and ``inter`` (K,) int64 pixels.
    Either side's instances may overlap each other (real GT does).
    """
    ga, pa = _as_runs(gt, shape, "gt"), _as_runs(pred, shape, "pred")
    if ga[3] != pa[3]:
        raise ValueError(f"gt ({ga[3]}) and pred ({pa[3]}) have different shapes")
    a, b, c = _k.run_overlaps(ga[0], ga[1], ga[2], pa[0], pa[1], pa[2])
    return (_k.run_areas(ga[0], ga[2])[1:], _k.run_areas(pa[0], pa[2])[1:], a - 1, b - 1,
            c.astype(np.int64))


def score_images(pairs: Iterable[tuple], shape=None) -> Iterator[ImageScore]:
    """Lazily score ``(id, cell_type, gt, pred)`` tuples; yields one ImageScore each."""
    for image_id, cell_type, gt, pred in pairs:
        yield image_score(gt, pred, shape, id=image_id, cell_type=cell_type)


@dataclass(frozen=True)
class Summary:
    """AP per threshold (mean over images of score(t)), MAP, and the same per cell type."""

    thresholds: tuple
    ap: np.ndarray  # (10,) float64
    tp: np.ndarray  # (10,) int64 summed over images
    fp: np.ndarray
    fn: np.ndarray
    n_images: int
    by_cell_type: dict = field(default_factory=dict)  # cell_type -> Summary

    @property
    def map(self) -> float:
        """Mean of per-image scores (= mean of :attr:`ap`); a Summary holds >= 1 image."""
        return float(self.ap.mean())

    def to_dict(self) -> dict:
        out = {"map": self.map, "thresholds": list(self.thresholds), "ap": self.ap.tolist(),
               "n_images": self.n_images, "tp": self.tp.tolist(), "fp": self.fp.tolist(),
               "fn": self.fn.tolist()}
        if self.by_cell_type:
            out["by_cell_type"] = {k: v.to_dict() for k, v in self.by_cell_type.items()}
        return out


class NothingToScore(ValueError):
    """No image to score: a mean over zero images has no value (it is never reported as NaN)."""


def _summary(scores: Sequence[ImageScore]) -> Summary:
    ap = np.mean([s.per_threshold for s in scores], axis=0)
    tp, fp, fn = (np.sum([getattr(s, f) for s in scores], axis=0) for f in ("tp", "fp", "fn"))
    return Summary(THRESHOLDS, ap, tp, fp, fn, len(scores))


def summarize(scores: Iterable[ImageScore], by_cell_type: bool = True) -> Summary:
    """Aggregate image scores overall and (images with a ``cell_type``) per cell type.

    Raises :class:`NothingToScore` (a ValueError) for zero images."""
    scores = list(scores)
    if not scores:
        raise NothingToScore("nothing to score: no image")
    total = _summary(scores)
    if not by_cell_type:
        return total
    types = sorted({s.cell_type for s in scores if s.cell_type is not None})
    groups = {t: _summary([s for s in scores if s.cell_type == t]) for t in types}
    return Summary(total.thresholds, total.ap, total.tp, total.fp, total.fn, total.n_images, groups)


def dataset_score(scores: Iterable[ImageScore]) -> float:
    """The leaderboard number: mean image score (:class:`NothingToScore` for no images)."""
    return summarize(scores, by_cell_type=False).map
