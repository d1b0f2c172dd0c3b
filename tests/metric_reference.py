"""An independent reference for the competition metric, written from its definition alone.

Nothing here imports the kit. Masks are sets of 0-based row-major pixel indices, decoded from
Kaggle RLE strings by the definition (1-based ``start length`` pairs over the ROW-MAJOR
flattened image). IoU is computed from the pixel sets and compared with each threshold as an
exact fraction; TP(t) is the size of a maximum one-to-one matching of the pairs with
IoU > t, found by ``scipy.optimize.linear_sum_assignment``. Masks with no pixel are not
instances. Slow on purpose: clarity over speed.
"""
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
from scipy.optimize import linear_sum_assignment

THRESHOLDS = [Fraction(50 + 5 * k, 100) for k in range(10)]  # 0.50, 0.55, ..., 0.95


def rle_pixels(text: str) -> frozenset:
    """Pixel set of one Kaggle RLE string."""
    numbers = [int(t) for t in text.split()]
    pixels = set()
    for start, length in zip(numbers[0::2], numbers[1::2]):
        pixels.update(range(start - 1, start - 1 + length))
    return frozenset(pixels)


def mask_pixels(mask: np.ndarray) -> frozenset:
    """Pixel set of one (H, W) bool mask."""
    return frozenset(np.flatnonzero(np.asarray(mask).reshape(-1)).tolist())


def label_image_pixels(labels: np.ndarray) -> list:
    """Pixel sets of every label > 0 of an (H, W) label image, in ascending label order."""
    flat = np.asarray(labels).reshape(-1)
    return [frozenset(np.flatnonzero(flat == v).tolist()) for v in np.unique(flat) if v != 0]


def counts(gt: list, pred: list) -> tuple[list[int], int, int]:
    """(TP at each threshold, n_true, n_pred) of two lists of pixel sets (may overlap)."""
    gt = [g for g in gt if g]
    pred = [p for p in pred if p]
    owners = defaultdict(list)
    for j, p in enumerate(pred):
        for px in p:
            owners[px].append(j)
    inter = Counter()
    for i, g in enumerate(gt):
        for px in g:
            for j in owners.get(px, ()):
                inter[i, j] += 1
    tp = []
    for t in THRESHOLDS:
        above = np.zeros((len(gt), len(pred)), np.int64)
        for (i, j), c in inter.items():
            if Fraction(c, len(gt[i]) + len(pred[j]) - c) > t:
                above[i, j] = 1
        rows, cols = linear_sum_assignment(above, maximize=True)
        tp.append(int(above[rows, cols].sum()))
    return tp, len(gt), len(pred)


def image_score(gt: list, pred: list) -> float:
    """Mean over thresholds of TP / (TP + FP + FN); 1.0 at a threshold where both sides are empty."""
    tp, n_true, n_pred = counts(gt, pred)
    per_t = [Fraction(k, n_true + n_pred - k) if n_true + n_pred else Fraction(1) for k in tp]
    return float(sum(per_t) / len(per_t))
