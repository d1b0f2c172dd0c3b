"""kit.error_analysis: every unmatched mask gets its cause; counts add up to the metric's."""
import numpy as np
import pytest

from kit import metric
from kit.error_analysis import ErrorCounts, image_errors
from kit.rle import encode

H, W = 40, 40


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return encode(m)


def test_each_cause_on_a_hand_made_image():
    gt = [box(0, 10, 0, 10), box(0, 10, 10, 20),      # found as one prediction (merge)
          box(20, 30, 0, 20),                         # found as two pieces (split)
          box(30, 40, 30, 40),                        # found
          box(15, 18, 30, 40)]                        # small, outlined too loosely
    pred = [box(0, 10, 0, 20),
            box(20, 30, 0, 10), box(20, 30, 10, 20),
            box(30, 40, 30, 40),
            box(0, 5, 30, 35),                        # on background
            box(14, 20, 30, 40)]                      # IoU exactly 0.5: not a match
    e = image_errors(gt, pred, (H, W))
    assert (e.n_gt, e.n_pred, e.tp, e.fn, e.fp) == (5, 6, 1, 4, 5)
    assert (e.fn_merged, e.fn_split, e.fn_missed, e.fn_outline) == (2, 1, 0, 1)
    assert (e.fp_merge, e.fp_piece, e.fp_spurious, e.fp_outline) == (1, 2, 1, 1)
    assert (e.fn_small, e.fn_medium, e.fn_large) == (1, 3, 0)
    assert e.tp == metric.image_score(gt, pred, (H, W)).tp[0]


def test_no_prediction_and_no_gt():
    gt = [box(0, 10, 0, 10)]
    e = image_errors(gt, [], (H, W))
    assert (e.fn, e.fn_missed, e.fp) == (1, 1, 0)
    e = image_errors([], gt, (H, W))
    assert (e.fp, e.fp_spurious, e.fn) == (1, 1, 0)
    total = image_errors(gt, [], (H, W)) + image_errors([], gt, (H, W))
    assert total.as_dict()["fn"] == 1 and total.as_dict()["fp"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_causes_partition_the_metric_counts_on_random_masks(seed):
    rng = np.random.default_rng(seed)

    def random_boxes(n):
        out = []
        for _ in range(n):
            y, x = rng.integers(0, H - 8, 2)
            h, w = rng.integers(3, 9, 2)
            out.append(box(y, y + h, x, x + w))
        return out

    gt, pred = random_boxes(12), random_boxes(10)
    e = image_errors(gt, pred, (H, W))
    assert e.tp == metric.image_score(gt, pred, (H, W)).tp[0]
    assert e.fn_merged + e.fn_split + e.fn_missed + e.fn_outline == e.fn
    assert e.fn_small + e.fn_medium + e.fn_large == e.fn
    assert e.fp_merge + e.fp_piece + e.fp_spurious + e.fp_outline == e.fp
    assert isinstance(e + ErrorCounts(), ErrorCounts)
