"""kit.rle: round trips (hypothesis), conventions, validation errors, numba vs numpy reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from kit import rle


def reference_encode(mask: np.ndarray) -> str:
    """Plain-numpy Kaggle RLE of one mask (row-major, 1-based): the reference for the kernel."""
    pixels = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def label_images(draw, max_label=6):
    h, w = draw(shapes)
    return draw(arrays(np.int32, (h, w), elements=st.integers(0, max_label)))


@settings(max_examples=300, deadline=None)
@given(label_images())
def test_label_image_round_trip(labels):
    rles = rle.encode_labels(labels)
    present = [v for v in np.unique(labels) if v]
    assert len(rles) == len(present)
    back = rle.decode_labels(rles, labels.shape)
    assert back.dtype == np.int32
    # decoded labels are 1..N in ascending original-label order
    expected = np.zeros_like(back)
    for k, v in enumerate(present, start=1):
        expected[labels == v] = k
    np.testing.assert_array_equal(back, expected)
    for v, r in zip(present, rles):
        assert r == reference_encode(labels == v)


@settings(max_examples=300, deadline=None)
@given(shapes.flatmap(lambda s: arrays(np.bool_, s)))
def test_mask_round_trip(mask):
    text = rle.encode(mask)
    assert text == reference_encode(mask)
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: arrays(np.bool_, (n, 7, 9))))
def test_stack_round_trip_keeps_overlaps(stack):
    rles = rle.encode_stack(stack)
    assert rles == [reference_encode(m) for m in stack]
    np.testing.assert_array_equal(rle.decode_stack(rles, (7, 9)), stack)


def test_row_major_one_based_first_and_last_pixel():
    m = np.zeros((520, 704), bool)
    m[0, 0] = m[0, 1] = True  # first two pixels
    m[1, 0] = True  # first pixel of row 2 -> index 704 -> start 705
    m[519, 703] = True  # last pixel
    assert rle.encode(m) == "1 2 705 1 366080 1"
    assert rle.decode("366080 1", (520, 704))[519, 703]


def test_full_and_empty_masks():
    assert rle.encode(np.zeros((3, 4), bool)) == ""
    assert rle.encode(np.ones((3, 4), bool)) == "1 12"
    assert not rle.decode("", (3, 4)).any()
    assert rle.decode_labels([], (3, 4)).sum() == 0
    assert rle.decode_stack([], (3, 4)).shape == (0, 3, 4)


def test_decode_labels_overlap_later_wins():
    labels = rle.decode_labels(["1 4", "3 4"], (2, 3))
    np.testing.assert_array_equal(labels.reshape(-1), [1, 1, 2, 2, 2, 2])


def test_non_sequential_huge_and_unsigned_labels():
    lab = np.zeros((4, 5), np.int64)
    lab[0, :2] = 10**12
    lab[3, 4] = 5
    assert rle.encode_labels(lab) == ["20 1", "1 2"]  # ascending label order: 5, then 10**12
    assert rle.encode_labels(lab.astype(np.uint64)) == ["20 1", "1 2"]
    assert rle.encode_labels(np.where(lab > 0, 7, 9).astype(np.uint16)) == ["1 2 20 1", "3 17"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.int64, bool])
def test_dtypes_noncontiguous_readonly(dtype):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2 if dtype is bool else 5, (20, 30)).astype(dtype)
    view = base[::2, ::3]  # non-contiguous
    view.flags.writeable = False
    rles = rle.encode_labels(view)
    present = [v for v in np.unique(view) if v]
    assert rles == [reference_encode(view == v) for v in present]


@pytest.mark.parametrize("text, message", [
    ("1 2 3", "odd number of tokens"),
    ("1 x", "token 'x' is not a non-negative integer"),
    ("1.5 2", "not a non-negative integer"),
    ("-1 2", "not a non-negative integer"),
    ("0 2", "start 0 < 1"),
    ("1 0", "length 0 < 1"),
    ("11 3", "past the image end 12"),
    ("5 2 1 1", "runs must be sorted"),
    ("1 4 3 2", "runs must be sorted"),
])
def test_validation_errors(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text, (3, 4))


def test_error_names_position_in_list():
    with pytest.raises(rle.RLEError) as info:
        rle.decode_labels(["1 1", "2 1", "3 0"], (3, 4))
    assert info.value.index == 2 and "RLE #2, token 1" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="negative labels"):
        rle.encode_labels(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="2-D"):
        rle.encode_labels(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="integer or bool"):
        rle.encode_labels(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape must be"):
        rle.decode("1 1", (3,))
    with pytest.raises(ValueError, match="must be a string"):
        rle.decode_labels([5], (3, 4))


def test_kaggle_to_coco_is_mask_to_coco_without_the_full_size_decode():
    rng = np.random.default_rng(7)
    shape = (23, 31)
    masks = [rng.random(shape) < 0.3 for _ in range(20)]
    masks[0][:] = False
    masks[0][0, 0] = True                     # the first pixel alone
    masks[1][:] = False
    masks[1][-1, -3:] = True                  # ends on the last pixel: no trailing background
    masks[2][:] = False                       # empty
    masks[3][:] = True                        # everything
    got = rle.kaggle_to_coco([rle.encode(m) for m in masks], shape)
    assert got[2] is None
    for m, g in zip(masks, got):
        if m.any():
            ys, xs = np.nonzero(m)
            assert g == (rle.mask_to_coco(m), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    with pytest.raises(rle.RLEError):
        rle.kaggle_to_coco(["5 3 1 2"], shape)   # starts must ascend


def test_coco_round_trip_is_column_major():
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    coco = rle.mask_to_coco(m)
    np.testing.assert_array_equal(rle.coco_to_mask(coco, (5, 7)), m)
    # uncompressed counts over the column-major flattening: 7 zeros, then 2 ones, 3 zeros ...
    flat_f = m.reshape(-1, order="F")
    first_one = int(np.argmax(flat_f))
    assert rle.coco_to_mask({"size": [5, 7], "counts": [first_one, 2, 35 - first_one - 2]},
                            (5, 7)).sum() == 2
    with pytest.raises(ValueError, match="does not match"):
        rle.coco_to_mask(coco, (7, 5))


@pytest.mark.parametrize("shape", [(1, 511), (1, 512), (1, 513), (1, 1025), (3, 5000), (64, 64)])
@pytest.mark.parametrize("n_labels", [2, 3, 50, 5000])
def test_chunk_edges_against_reference(shape, n_labels):
    """The scan works on blocks of 512 pixels read 8 at a time: probe every block edge."""
    rng = np.random.default_rng(n_labels)
    for labels in (rng.integers(0, n_labels, shape),
                   np.repeat(rng.integers(0, n_labels, (shape[0], shape[1] // 7 + 1)), 7, axis=1)[:, :shape[1]]):
        for dtype in (np.uint8, np.uint16, np.int32, np.int64):
            if labels.max() > np.iinfo(dtype).max:
                continue
            lab = labels.astype(dtype)
            present = [v for v in np.unique(lab) if v]
            assert rle.encode_labels(lab) == [reference_encode(lab == v) for v in present]
