"""Peer implementations that :mod:`benchmarks.bench` times the kit against. Private to the bench.

Each peer is written the way popular Kaggle notebooks of the competition wrote it (re-typed
from their description, on purpose without improvements: their speed is what is measured).
Their known limits are kept and stated here, and the bench feeds them inputs they handle:

* :func:`hist2d_image_score` counts bins with ``len(np.unique(x))``, which is only right for
  **sequential** labels ``0..N``; give it sequentially relabelled images.
* :func:`cellpose_image_score` wraps ``cellpose.metrics.average_precision``, which also
  assumes sequential labels (it sizes its matrices by ``max()``) and matches with
  ``IoU >= t`` where the competition (and the kit) use ``IoU > t``.
* :func:`notebook_encode_labels` scans the full image once per instance (O(N * H * W)).
"""
from __future__ import annotations

import numpy as np
from numba import njit

THRESHOLDS = [round(0.5 + 0.05 * k, 2) for k in range(10)]  # passed to cellpose (IoU >= t)
NOTEBOOK_THRESHOLDS = np.arange(0.5, 1.0, 0.05)  # the notebook's loop (IoU > t, float t)


# ---------------------------------------------------------------------------------------------
# Scoring


def _hist2d_iou(labels: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """IoU matrix without background, as the notebook computes it (sequential labels only)."""
    true_objects = len(np.unique(labels))
    pred_objects = len(np.unique(y_pred))
    intersection = np.histogram2d(labels.flatten(), y_pred.flatten(),
                                  bins=(true_objects, pred_objects))[0]
    area_true = np.histogram(labels, bins=true_objects)[0]
    area_pred = np.histogram(y_pred, bins=pred_objects)[0]
    area_true = np.expand_dims(area_true, -1)
    area_pred = np.expand_dims(area_pred, 0)
    union = area_true + area_pred - intersection
    intersection = intersection[1:, 1:]
    union = union[1:, 1:]
    union[union == 0] = 1e-9
    return intersection / union


def _precision_at(threshold: float, iou: np.ndarray) -> tuple[int, int, int]:
    matches = iou > threshold
    true_positives = np.sum(matches, axis=1) == 1
    false_positives = np.sum(matches, axis=0) == 0
    false_negatives = np.sum(matches, axis=1) == 0
    return np.sum(true_positives), np.sum(false_positives), np.sum(false_negatives)


def hist2d_counts(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(3, 10) int (tp, fp, fn) at t in arange(0.5, 1, 0.05), the notebook's way."""
    iou = _hist2d_iou(gt, pred)
    return np.array([_precision_at(t, iou) for t in NOTEBOOK_THRESHOLDS]).T


def hist2d_image_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """The "histogram2d notebook" image score: mean over t in arange(0.5, 1, 0.05) of
    tp / (tp + fp + fn). Labels must be sequential (see the module docstring)."""
    iou = _hist2d_iou(gt, pred)
    prec = []
    for t in NOTEBOOK_THRESHOLDS:
        tp, fp, fn = _precision_at(t, iou)
        prec.append(tp / (tp + fp + fn))
    return float(np.mean(prec))


def hist2d_intersections(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer (intersection, union) matrices, background excluded, for sequential labels.

    Not a peer: the bench uses it to find IoUs that sit exactly on a threshold (ties), where
    ``>`` (kit, notebook) and ``>=`` (cellpose) legitimately disagree.
    """
    n_gt = int(gt.max()) + 1
    n_pred = int(pred.max()) + 1
    inter = np.bincount(gt.ravel().astype(np.int64) * n_pred + pred.ravel(),
                        minlength=n_gt * n_pred).reshape(n_gt, n_pred)
    area_gt = inter.sum(1, keepdims=True)
    area_pred = inter.sum(0, keepdims=True)
    union = area_gt + area_pred - inter
    return inter[1:, 1:], union[1:, 1:]


def cellpose_counts(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(3, 10) int (tp, fp, fn) of ``cellpose.metrics.average_precision`` at 0.50..0.95."""
    from cellpose import metrics

    _, tp, fp, fn = metrics.average_precision([gt], [pred], threshold=THRESHOLDS)
    return np.array([tp[0], fp[0], fn[0]]).round().astype(np.int64)


def cellpose_image_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """``cellpose.metrics.average_precision`` at 0.50..0.95, averaged (sequential labels)."""
    from cellpose import metrics

    ap, _, _, _ = metrics.average_precision([gt], [pred], threshold=THRESHOLDS)
    return float(ap[0].mean())


@njit(cache=True, nogil=True)
def _sum_both(a, b):
    s = np.int64(0)
    for i in range(a.size):
        s += a[i] + b[i]
    return s


def floor_read_both(gt: np.ndarray, pred: np.ndarray) -> int:
    """FLOOR: one numba pass summing both flat label images (the cost of reading them once)."""
    return int(_sum_both(gt.reshape(-1), pred.reshape(-1)))


# ---------------------------------------------------------------------------------------------
# Encode


def rle_encode(img: np.ndarray) -> str:
    """The notebook's one-mask encoder: row-major, 1-based starts."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def notebook_encode_labels(labels: np.ndarray) -> list[str]:
    """One :func:`rle_encode` per instance, ascending label order (a full-image scan each)."""
    return [rle_encode(labels == k) for k in np.unique(labels)[1:]]


def coco_stack(labels: np.ndarray) -> np.ndarray:
    """(H, W, N) uint8 Fortran-order stack of the instances, the layout pycocotools wants."""
    ids = np.unique(labels)[1:]
    stack = np.zeros(labels.shape + (len(ids),), np.uint8, order="F")
    for j, k in enumerate(ids):
        stack[:, :, j] = labels == k
    return stack


def coco_encode(stack: np.ndarray) -> list[dict]:
    """pycocotools ``mask.encode`` of a (H, W, N) Fortran stack (COLUMN-major COCO RLE)."""
    from pycocotools import mask as coco_mask

    return coco_mask.encode(stack)


# ---------------------------------------------------------------------------------------------
# Decode


def rle_decode(mask_rle: str, shape) -> np.ndarray:
    """The notebook's one-mask decoder: a float64 (H, W) image of 0/1."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1])
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape)


def notebook_decode_labels(rles: list[str], shape) -> np.ndarray:
    """Paint :func:`rle_decode` of each RLE into an int32 label image; later masks win."""
    labels = np.zeros(shape, np.int32)
    for k, rle in enumerate(rles):
        labels[rle_decode(rle, shape) == 1] = k + 1
    return labels


def notebook_rle_image_score(gt_rles: list[str], pred_rles: list[str], shape) -> float:
    """The notebook path for RLE lists: :func:`notebook_decode_labels` on both sides (masks
    painted in list order, so overlapping pixels go to the later mask and a mask drawn over
    completely vanishes), labels made sequential (what :func:`hist2d_image_score` needs to be
    right at all), then :func:`hist2d_image_score`."""
    def painted(rles):
        labels = notebook_decode_labels(rles, shape)
        present, inverse = np.unique(labels, return_inverse=True)
        return (inverse.reshape(shape) + (present[0] != 0)).astype(np.int32)

    return hist2d_image_score(painted(gt_rles), painted(pred_rles))


def coco_decode(rles: list[dict]) -> np.ndarray:
    """pycocotools ``mask.decode``: (H, W, N) uint8 stack (no label image is painted)."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode(rles)
