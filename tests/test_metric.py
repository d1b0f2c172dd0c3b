"""kit.metric: hand-computed cases, strictness, empties, overlaps, brute-force and cellpose agreement."""
import numpy as np
import pytest

from kit import metric, rle


def square(shape, y, x, size, value=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[y:y + size, x:x + size] = value
    return out


def brute_force(gt_stack, pred_stack):
    """Independent reference: dense IoU matrix from bool stacks, strict >, greedy-free count."""
    scores = []
    for t in metric.THRESHOLDS:
        tp = 0
        for g in gt_stack:
            for p in pred_stack:
                inter = np.logical_and(g, p).sum()
                union = np.logical_or(g, p).sum()
                if union and inter / union > t:
                    tp += 1
        fp, fn = len(pred_stack) - tp, len(gt_stack) - tp
        scores.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores))


def labels_to_stack(labels):
    return np.stack([labels == v for v in np.unique(labels) if v]) if labels.any() else \
        np.zeros((0,) + labels.shape, bool)


def test_perfect_and_shifted_square():
    gt = square((20, 20), 2, 2, 10)
    assert metric.image_score(gt, gt).score == 1.0
    # shift by 2 columns: inter 80, union 120 -> IoU 2/3: matches at .50 .55 .60 .65 only
    pred = square((20, 20), 2, 4, 10)
    s = metric.image_score(gt, pred)
    np.testing.assert_array_equal(s.tp, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.fp, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(s.fn, s.fp)
    assert s.score == pytest.approx((4 * 1 + 6 * 0) / 10)


def test_strictly_greater_at_exact_thresholds():
    gt = square((10, 10), 0, 0, 4)  # area 16
    half = np.zeros((10, 10), np.int32)
    half[0:4, 0:2] = 1
    half[4:6, 0:4] = 1  # inter 8, union 24 -> 1/3; make an exact 0.5 instead:
    exact_half = np.zeros((10, 10), np.int32)
    exact_half[0:4, 0:2] = 1  # inter 8, union 16 -> IoU exactly 0.5
    assert metric.image_score(gt, exact_half).tp[0] == 0
    three_quarters = np.zeros((10, 10), np.int32)
    three_quarters[0:3, 0:4] = 1  # inter 12, union 16 -> IoU exactly 0.75
    s = metric.image_score(gt, three_quarters)
    # matches at t < 0.75 (0.50 .. 0.70), not at 0.75
    np.testing.assert_array_equal(s.tp, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_non_sequential_labels_histogram2d_bug_absent():
    gt = square((30, 30), 0, 0, 5, value=1)
    square((30, 30), 10, 10, 5, value=2, out=gt)
    square((30, 30), 20, 20, 5, value=3, out=gt)
    pred = np.zeros_like(gt)
    pred[gt == 1] = 7
    pred[gt == 2] = 1000
    pred[gt == 3] = 55  # same masks, labels with gaps
    assert metric.image_score(gt, pred).score == 1.0
    gapped_gt = np.where(gt == 2, 9, gt)
    assert metric.image_score(gapped_gt, pred).score == 1.0


def test_empty_cases():
    empty = np.zeros((8, 8), np.int32)
    one = square((8, 8), 1, 1, 3)
    assert metric.image_score(empty, empty).score == 1.0
    assert metric.image_score(one, empty).score == 0.0
    assert metric.image_score(empty, one).score == 0.0
    assert metric.image_score([], [], (8, 8)).score == 1.0
    # an empty RLE is not an instance
    assert metric.image_score([""], [], (8, 8)).score == 1.0
    s = metric.image_score(one, empty)
    assert (s.n_true, s.n_pred) == (1, 0) and s.fn.tolist() == [1] * 10


def test_overlapping_stacks_use_mask_iou():
    shape = (20, 20)
    a = square(shape, 0, 0, 10).astype(bool)
    b = square(shape, 5, 5, 10).astype(bool)  # overlaps a by 25 px
    gt = np.stack([a, b])
    pred = np.stack([a, b])
    # painted into one label image b would eat a's corner; from masks both are perfect
    assert metric.image_score(gt, pred).score == 1.0
    assert metric.image_score(rle.encode_stack(gt), rle.encode_stack(pred), shape).score == 1.0
    assert metric.image_score(list(rle.encode_stack(gt)), np.stack([a]), None).n_pred == 1
    assert metric.image_score(gt, pred).score == brute_force(gt, pred)


def random_blobs(rng, shape, n):
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(2, 7, 2)
        lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k * 3  # gapped labels
    return lab


def perturb(rng, lab):
    pred = np.roll(lab, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
    pred[rng.random(lab.shape) < 0.03] = 0
    return pred


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = random_blobs(rng, (40, 50), rng.integers(0, 12))
    pred = perturb(rng, gt)
    expected = brute_force(labels_to_stack(gt), labels_to_stack(pred))
    assert metric.image_score(gt, pred).score == pytest.approx(expected, abs=1e-12)
    by_rle = metric.image_score(rle.encode_labels(gt), rle.encode_labels(pred), gt.shape)
    assert by_rle.score == pytest.approx(expected, abs=1e-12)


def test_agrees_with_cellpose_where_no_iou_hits_a_threshold():
    from cellpose.metrics import average_precision
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(80):
        gt = relabel_sequential(random_blobs(rng, (60, 80), 15))[0]
        pred = relabel_sequential(perturb(rng, gt))[0]
        a, b, iou = metric.iou_pairs(gt, pred)
        if np.any(np.isclose(iou * 20, np.round(iou * 20), atol=1e-9)):
            continue  # cellpose uses >=: the two legitimately differ at exact thresholds
        ap, _, _, _ = average_precision([gt], [pred], threshold=list(metric.THRESHOLDS))
        assert metric.image_score(gt, pred).per_threshold == pytest.approx(ap[0], abs=1e-6)
        compared += 1
    assert compared >= 20


def test_summary_by_cell_type_and_threshold():
    gt = square((20, 20), 2, 2, 10)
    shifted = square((20, 20), 2, 4, 10)
    scores = [metric.image_score(gt, gt, id="a", cell_type="cort"),
              metric.image_score(gt, shifted, id="b", cell_type="astro"),
              metric.image_score(gt, gt, id="c", cell_type="astro")]
    s = metric.summarize(scores)
    assert s.n_images == 3
    assert s.map == pytest.approx((1.0 + 0.4 + 1.0) / 3)
    assert s.by_cell_type["astro"].map == pytest.approx(0.7)
    assert s.by_cell_type["astro"].n_images == 2
    assert s.by_cell_type["cort"].ap.tolist() == [1.0] * 10
    assert s.ap[0] == 1.0 and s.ap[-1] == pytest.approx(2 / 3)
    assert metric.dataset_score(scores) == pytest.approx(s.map)
    assert s.to_dict()["by_cell_type"]["astro"]["n_images"] == 2


def test_shape_mismatch_errors():
    with pytest.raises(ValueError, match=r"different shapes"):
        metric.image_score(np.zeros((5, 5), np.int32), np.zeros((5, 6), np.int32))
    with pytest.raises(ValueError, match="pass shape"):
        metric.image_score(["1 1"], ["1 1"])
    with pytest.raises(ValueError, match="past the image end"):
        metric.image_score(["1 1"], ["20 10"], (4, 5))


@pytest.mark.parametrize("shape", [(1, 511), (1, 513), (3, 1030), (37, 29)])
def test_chunk_edges_and_label_ranges(shape):
    rng = np.random.default_rng(sum(shape))
    gt = np.repeat(rng.integers(0, 6, (shape[0], shape[1] // 5 + 1)), 5, axis=1)[:, :shape[1]]
    pred = np.roll(gt, 2, axis=1)
    pred[:, :3] = 0
    expected = brute_force(labels_to_stack(gt), labels_to_stack(pred))
    assert metric.image_score(gt, pred).score == pytest.approx(expected, abs=1e-12)
    # huge and unsigned labels are compacted, the score does not change
    assert metric.image_score(gt.astype(np.int64) * 2**40, pred.astype(np.uint64) * 2**61).score == \
        pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="pred has negative labels"):
        metric.image_score(gt, -pred.astype(np.int32))


@pytest.mark.parametrize("top", [2**31 - 1, 2**31, 2**40])
def test_labels_near_the_key_limit_cost_no_dense_table(top):
    """Labels just below 2**31 fit the pair key but are far too large for a per-label
    table (one would be 16 GB): they must be scored like any other labels, and iou_pairs too."""
    gt = np.zeros((6, 7), np.int64)
    gt[:3, :3] = top
    gt[3:, 4:] = 5
    pred = np.zeros_like(gt)
    pred[:3, :2] = top - 1  # IoU 6/9 with gt's `top`
    pred[3:, 4:] = 5        # exact match
    small = np.where(gt == top, 1, gt), np.where(pred == top - 1, 2, pred)
    expected = metric.image_score(*small)
    got = metric.image_score(gt, pred)
    np.testing.assert_array_equal(got.tp, expected.tp)
    assert (got.n_true, got.n_pred) == (2, 2)
    a, b, iou = metric.iou_pairs(gt, pred)
    assert a.tolist() == [5, top] and b.tolist() == [5, top - 1]
    np.testing.assert_allclose(iou, [1.0, 6 / 9])
    big = np.uint64(2**63 + 7)  # past int64: labels come back exact, not as floats
    a, b, _ = metric.iou_pairs(gt, np.where(pred > 0, big, np.uint64(0)))
    assert b.dtype == np.uint64 and b.tolist() == [int(big), int(big)]


def test_pair_table_growth_keeps_every_pair_in_scan_order():
    """Thousands of distinct (gt, pred) pairs make the pair table grow several times while
    the scan runs: every pair must survive with its exact count, listed in the order the scan
    first met it, and label images must score like the same instances given as RLE lists."""
    from kit import _metric_numba as k

    rng = np.random.default_rng(11)
    shape = (240, 700)
    labels = rng.permutation(10**6)[:4620] + 1  # non-sequential, large
    gt = np.kron(labels.reshape(60, 77), np.ones((4, 9), np.int64))
    gt = np.pad(gt, ((0, 0), (0, shape[1] - gt.shape[1])))
    pred = np.roll(gt, 2, axis=1) * 3  # IoU 28 / 44 with its gt tile, less the holes
    pred[rng.random(shape) < 0.05] = 0
    a, b, c, label_or = k.label_overlaps(gt.ravel(), pred.ravel())
    key = gt.ravel() * 2**32 + pred.ravel()
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    keep = uniq != 0
    order = np.argsort(first[keep])
    assert a.size > k._FIRST_SLOTS  # past half a first table twice: it grew at least twice
    np.testing.assert_array_equal(a, (uniq[keep] >> 32)[order])
    np.testing.assert_array_equal(b, (uniq[keep] & 0xFFFFFFFF)[order])
    np.testing.assert_array_equal(c, counts[keep][order])
    assert label_or == np.bitwise_or.reduce(np.r_[gt.ravel(), pred.ravel()])
    assert k.keys_fit(label_or)
    as_rles = metric.image_score(rle.encode_labels(gt), rle.encode_labels(pred), shape)
    as_labels = metric.image_score(gt, pred)
    np.testing.assert_array_equal(as_labels.tp, as_rles.tp)
    assert (as_labels.n_true, as_labels.n_pred) == (as_rles.n_true, as_rles.n_pred) == (
        np.unique(gt[gt > 0]).size, np.unique(pred[pred > 0]).size)
    assert as_labels.tp[0] > 0


def test_pair_areas_dense_and_sorted_paths_agree():
    """The two ways kit._metric_numba.pair_areas sums per-label areas give the same answer."""
    from kit import _metric_numba as k

    rng = np.random.default_rng(3)
    x = rng.integers(0, 40, 300)
    count = rng.integers(1, 50, 300)
    dense_area, dense_n = k.pair_areas(x, count)
    shift = np.where(x > 0, x + 10**12, 0)  # same grouping, labels too large for a table
    sorted_area, sorted_n = k.pair_areas(shift, count)
    expected = np.array([count[x == v].sum() for v in x])
    np.testing.assert_array_equal(dense_area, expected)
    np.testing.assert_array_equal(sorted_area, expected)
    assert dense_n == sorted_n == len(set(x[x > 0].tolist()))
