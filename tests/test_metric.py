"""kit.metric: hand-computed cases, strictness, empties, overlaps, one-to-one matching, the
independent reference (tests/metric_reference.py), real ground truth, cellpose agreement."""
from tests import metric_reference as reference
import numpy as np
import pytest

from kit import metric, rle
from tests.conftest import SHARED_DATA


def square(shape, y, x, size, value=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[y:y + size, x:x + size] = value
    return out


def brute_force(gt_stack, pred_stack):
    """The independent reference (tests/metric_reference.py) on two bool stacks."""
    return reference.image_score([reference.mask_pixels(m) for m in gt_stack],
                                 [reference.mask_pixels(m) for m in pred_stack])


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


# ---------------------------------------------------------------------------------------------
# One-to-one matching: overlapping masks within a side (train.csv GT overlaps, has duplicates)

SHAPE = (12, 16)


def box(y0, x0, y1, x1, shape=SHAPE):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def score_all_ways(gt_masks, pred_masks, shape=SHAPE):
    """image_score of the same masks as RLE lists and as bool stacks; both must agree."""
    by_rle = metric.image_score([rle.encode(m) for m in gt_masks],
                                [rle.encode(m) for m in pred_masks], shape)
    stack = lambda ms: np.stack(ms) if ms else np.zeros((0,) + shape, bool)  # noqa: E731
    by_stack = metric.image_score(stack(gt_masks), stack(pred_masks))
    np.testing.assert_array_equal(by_rle.tp, by_stack.tp)
    return by_rle


def test_duplicate_prediction_costs_one_false_positive():
    a = box(1, 1, 6, 6)
    s = score_all_ways([a], [a, a])
    assert s.tp.tolist() == [1] * 10 and s.fp.tolist() == [1] * 10 and s.fn.tolist() == [0] * 10
    assert s.score == 0.5
    # a whole submission written twice: every image loses, never gains
    cells = [box(0, 0, 4, 4), box(6, 6, 11, 12), box(0, 8, 5, 15)]
    once = score_all_ways(cells, cells)
    twice = score_all_ways(cells, cells + cells)
    assert once.score == 1.0 and twice.score == pytest.approx(0.5)


def test_duplicate_ground_truth_counts_once_per_prediction():
    a, b = box(1, 1, 6, 6), box(7, 9, 11, 15)
    s = score_all_ways([a, a, b], [a, b])  # GT a is in the file twice (as real GT can be)
    assert s.tp.tolist() == [2] * 10 and s.fn.tolist() == [1] * 10 and s.fp.tolist() == [0] * 10
    assert s.score == pytest.approx(2 / 3)
    assert score_all_ways([a, a, b], [a, a, b]).score == 1.0  # the GT scored against itself


def test_nested_ground_truth_mask():
    outer, inner = box(0, 0, 10, 10), box(1, 1, 9, 9)  # IoU 64/100: both clear 0.5 with outer
    s = score_all_ways([outer, inner], [outer])
    assert s.tp.tolist() == [1] * 10
    assert s.score == 0.5
    assert score_all_ways([outer, inner], [outer, inner]).score == 1.0


def test_merge_over_two_cells_and_split_of_one():
    left, right = box(2, 0, 8, 7), box(2, 7, 8, 16)  # 42 and 54 px, touching
    merged = left | right
    s = score_all_ways([left, right], [merged])  # right has IoU 54/96 > 0.5 with the merge
    assert s.tp.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    split = score_all_ways([merged], [left, right])
    np.testing.assert_array_equal(split.tp, s.tp)
    assert (split.n_true, split.n_pred) == (1, 2)


def test_matching_needs_an_augmenting_path():
    """Greedy assignment in list order gets 1 here; the maximum one-to-one matching is 2."""
    from kit import _metric_numba as k

    assert k.max_matching(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2) == 2
    assert k.max_matching(np.array([0, 1, 2]), np.array([0, 0, 0]), 3, 1) == 1
    assert k.max_matching(np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0) == 0
    # masks with that graph: g0 clears 0.5 with p0 and p1, g1 only with p0
    g0, p0, p1 = box(0, 0, 4, 10), box(0, 0, 4, 10), box(0, 0, 4, 7)
    g1 = box(0, 0, 4, 12)  # IoU(g1, p0) = 40/48, IoU(g1, p1) = 28/48 > 0.5 too
    g1b = box(0, 0, 5, 10)  # IoU(g1b, p0) = 40/50, IoU(g1b, p1) = 28/50 > 0.5
    for second in (g1, g1b):
        s = score_all_ways([g0, second], [p0, p1])
        assert s.tp[0] == 2
        assert s.tp.tolist() == reference.counts([reference.mask_pixels(m) for m in (g0, second)],
                                                 [reference.mask_pixels(m) for m in (p0, p1)])[0]


def test_max_matching_agrees_with_linear_sum_assignment():
    from scipy.optimize import linear_sum_assignment

    from kit import _metric_numba as k

    rng = np.random.default_rng(5)
    for _ in range(300):
        n_left, n_right = rng.integers(1, 9, 2)
        adj = rng.random((n_left, n_right)) < rng.uniform(0.1, 0.7)
        left, right = np.nonzero(adj)
        r, c = linear_sum_assignment(adj, maximize=True)
        assert k.max_matching(left.astype(np.int64), right.astype(np.int64), n_left,
                              n_right) == int(adj[r, c].sum())


def _overlapping_masks(rng, shape, n):
    """n masks that overlap each other: rectangles and ellipses, some duplicated, some nested,
    some the union of two others."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    masks = []
    for _ in range(n):
        kind = rng.integers(0, 5) if masks else 0
        if kind == 0:
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            ry, rx = rng.uniform(1.5, 5, 2)
            masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
        elif kind == 1:
            y0, x0 = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
            masks.append(box(y0, x0, y0 + rng.integers(2, 7), x0 + rng.integers(2, 9), shape))
        elif kind == 2:
            masks.append(masks[rng.integers(len(masks))].copy())  # duplicate
        elif kind == 3:
            m = masks[rng.integers(len(masks))]
            ys, xs = np.nonzero(m)
            inner = np.zeros(shape, bool)
            if ys.size > 4:  # nested: the mask less its first row and column
                inner[ys.min() + 1:, xs.min() + 1:] = m[ys.min() + 1:, xs.min() + 1:]
            masks.append(inner)
        else:
            i, j = rng.integers(len(masks), size=2)
            masks.append(masks[i] | masks[j])  # merge
    return masks


def _jitter(rng, masks, shape):
    out = []
    for m in masks:
        if rng.random() < 0.1:
            continue
        m = np.roll(m, (rng.integers(-1, 2), rng.integers(-1, 2)), axis=(0, 1))
        out.append(m & (rng.random(shape) > 0.05))
        if rng.random() < 0.15:
            out.append(out[-1].copy())
    return out


@pytest.mark.parametrize("seed", range(40))
def test_overlapping_masks_agree_with_the_reference(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (24, 30)
    gt = _overlapping_masks(rng, shape, rng.integers(0, 14))
    pred = _jitter(rng, gt, shape) + _overlapping_masks(rng, shape, rng.integers(0, 3))
    tp, n_true, n_pred = reference.counts([reference.mask_pixels(m) for m in gt],
                                          [reference.mask_pixels(m) for m in pred])
    s = score_all_ways(gt, pred, shape)
    assert s.tp.tolist() == tp and (s.n_true, s.n_pred) == (n_true, n_pred)
    assert 0.0 <= s.score <= 1.0
    gt_rles, pred_rles = [rle.encode(m) for m in gt], [rle.encode(m) for m in pred]
    for k, t in enumerate(metric.THRESHOLDS):  # the matching itself: one-to-one, IoU > t
        g, p = metric.matched_pairs(gt_rles, pred_rles, shape, t)
        assert len(g) == tp[k] and len(set(g)) == len(g) and len(set(p)) == len(p)
        for i, j in zip(g, p):
            inter = np.logical_and(gt[i - 1], pred[j - 1]).sum()
            assert 20 * inter > (10 + k) * np.logical_or(gt[i - 1], pred[j - 1]).sum()
    assert s.score == pytest.approx(reference.image_score(
        [reference.mask_pixels(m) for m in gt], [reference.mask_pixels(m) for m in pred]),
        abs=1e-12)
    # one side painted into a label image (no overlaps on that side) still matches one-to-one
    labels = np.zeros(shape, np.int32)
    for k, m in enumerate(pred, 1):
        labels[m] = k
    tp, _, _ = reference.counts([reference.mask_pixels(m) for m in gt],
                                reference.label_image_pixels(labels))
    mixed = metric.image_score([rle.encode(m) for m in gt], labels)
    assert mixed.tp.tolist() == tp


@pytest.mark.parametrize("seed", range(8))
def test_no_overlaps_same_counts_on_every_path(seed):
    """Without overlapping masks the candidates are the matching: label images, stacks and
    RLE lists give the same counts, equal to the reference's."""
    rng = np.random.default_rng(seed)
    gt = random_blobs(rng, (40, 50), rng.integers(1, 12))
    pred = perturb(rng, gt)
    tp, n_true, n_pred = reference.counts(reference.label_image_pixels(gt),
                                          reference.label_image_pixels(pred))
    paths = [metric.image_score(gt, pred),
             metric.image_score(labels_to_stack(gt), labels_to_stack(pred)),
             metric.image_score(rle.encode_labels(gt), rle.encode_labels(pred), gt.shape)]
    for s in paths:
        assert s.tp.tolist() == tp and (s.n_true, s.n_pred) == (n_true, n_pred)


def test_reference_decodes_rle_by_the_definition():
    assert reference.rle_pixels("1 3 10 2") == {0, 1, 2, 9, 10}
    m = np.zeros((3, 4), bool)
    m[1, 1:3] = True  # row-major pixels 5, 6 -> RLE "6 2"
    assert rle.encode(m) == "6 2" and reference.rle_pixels("6 2") == reference.mask_pixels(m)


# ---------------------------------------------------------------------------------------------
# Real ground truth (../shared/data/sartorius), skipped when absent

REAL = SHARED_DATA / "sartorius"
needs_real = pytest.mark.skipif(not (REAL / "train.csv").is_file(),
                                reason="real Sartorius GT (../shared/data/sartorius) not present")


@pytest.fixture(scope="module")
def real_records():
    from kit.data import read_train_csv

    return read_train_csv(REAL / "train.csv", check_images=False)


@needs_real
def test_every_real_image_scores_exactly_one_against_its_own_gt(real_records):
    assert len(real_records) == 418
    for r in real_records:
        s = metric.image_score(list(r.rles), list(r.rles), r.shape, id=r.id)
        assert s.score == 1.0, r.id
        assert s.tp.tolist() == [s.n_true] * 10 and s.n_true == len(r.rles)


@needs_real
@pytest.mark.parametrize("image_id", ["a7b1db2a42fc", "de504eaa5349"])
def test_real_duplicate_gt_matches_the_reference(real_records, image_id):
    """Real images that hold duplicate GT masks (IoU 1.0): a prediction of each distinct
    mask once matches one copy; the other copies are false negatives."""
    r = next(x for x in real_records if x.id == image_id)
    gt_sets = [reference.rle_pixels(t) for t in r.rles]
    distinct = list(dict.fromkeys(r.rles))
    assert len(distinct) < len(r.rles)  # duplicates are there
    rng = np.random.default_rng(0)
    pred = [distinct[i] for i in rng.permutation(len(distinct))]
    pred += pred[:7]  # and some predictions twice
    tp, n_true, n_pred = reference.counts(gt_sets, [reference.rle_pixels(t) for t in pred])
    s = metric.image_score(list(r.rles), pred, r.shape)
    assert s.tp.tolist() == tp and (s.n_true, s.n_pred) == (n_true, n_pred)
    # every distinct mask matches one copy; a repeated prediction may match a near-duplicate
    assert len(distinct) <= s.tp[0] < len(distinct) + 7 and 0.0 < s.score < 1.0
    shifted = rle.encode_stack(np.roll(rle.decode_stack(list(r.rles), r.shape), 1, axis=2))
    tp, _, _ = reference.counts(gt_sets, [reference.rle_pixels(t) for t in shifted])
    assert metric.image_score(list(r.rles), shifted, r.shape).tp.tolist() == tp


# ---------------------------------------------------------------------------------------------
# The run kernels against plain numpy


@pytest.mark.parametrize("top", [1, 2000, 2**19, 2**40])
def test_order_by_start_is_a_stable_argsort(top):
    from kit import _metric_numba as k

    rng = np.random.default_rng(top % 97)
    for n in (0, 1, 2, 17, 3000):
        starts = rng.integers(0, top, n).astype(np.int64)
        np.testing.assert_array_equal(k._order_by_start(starts),
                                      np.argsort(starts, kind="stable"))
        ordered = np.sort(starts)
        np.testing.assert_array_equal(k._order_by_start(ordered), np.arange(n))


@pytest.mark.parametrize("seed", range(6))
def test_run_overlaps_equal_dense_intersections(seed):
    """Every (a, b, count) of the run sweep equals the pixel count of stack_a[a-1] & stack_b[b-1],
    each intersecting pair listed once, none missed; masks overlap within both sides and
    runs cross row ends."""
    from kit import _metric_numba as k
    from kit import _rle_numba

    rng = np.random.default_rng(seed)
    shape = (9, 13)
    stacks = [rng.random((rng.integers(0, 12),) + shape) < rng.uniform(0.05, 0.5)
              for _ in range(2)]
    stacks[1] = np.concatenate([stacks[1], stacks[0][:2]])  # shared and repeated masks
    runs = [_rle_numba.stack_runs(s.reshape(len(s), -1)) for s in stacks]
    a, b, c = k.run_overlaps(*runs[0], *runs[1])
    dense = np.einsum("ip,jp->ij", stacks[0].reshape(len(stacks[0]), -1).astype(np.int64),
                      stacks[1].reshape(len(stacks[1]), -1).astype(np.int64))
    got = np.zeros_like(dense)
    for i, j, n in zip(a, b, c):
        assert got[i - 1, j - 1] == 0  # listed once
        got[i - 1, j - 1] = n
    np.testing.assert_array_equal(got, dense)
