"""The bit-level scan helpers every RLE and metric kernel relies on (kit._scan_numba)."""
import numpy as np
import pytest
from numba import njit

from kit import _scan_numba as scan


@njit(cache=False)
def _tz(word):
    return scan.trailing_zeros(word)


@pytest.mark.parametrize("bit", [0, 1, 7, 8, 31, 32, 62, 63])
def test_trailing_zeros(bit):
    word = np.uint64(1) << np.uint64(bit)
    assert _tz(word) == bit
    assert _tz(word | np.uint64(1 << 63)) == bit


def _expected_bits(changed: np.ndarray) -> np.ndarray:
    """(WORDS,) uint64 with bit r of word q = changed[64 q + r] (zero-padded to CHUNK)."""
    padded = np.zeros(scan.CHUNK, bool)
    padded[:changed.size] = changed
    return np.packbits(padded, bitorder="little").view(np.uint64)


@pytest.mark.parametrize("m", [1, 2, 63, 64, 65, 200, scan.CHUNK - 1, scan.CHUNK])
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_change_bits_match_numpy(m, dtype):
    """Full blocks (m == CHUNK) and the last, partial block (the *_tail builders)."""
    rng = np.random.default_rng(m)
    x = rng.integers(0, 3 if dtype is not bool else 2, m + 1).astype(dtype)
    y = rng.integers(0, 2, m + 1).astype(np.int32)
    bits = np.full(scan.WORDS, np.uint64(2**64 - 1))  # stale bits must be overwritten
    if m == scan.CHUNK:  # a full block
        scan.change_bits(x, bits)
    else:  # a single image's last block, as kit._rle_numba.scan_runs calls it
        scan.pair_change_bits_tail(x[:-1], x[1:], x[:-1], x[:-1], bits)
    np.testing.assert_array_equal(bits, _expected_bits(x[:-1] != x[1:]))
    if m == scan.CHUNK:
        scan.pair_change_bits(x, y, bits)
    else:
        scan.pair_change_bits_tail(x[:-1], x[1:], y[:-1], y[1:], bits)
    np.testing.assert_array_equal(bits, _expected_bits((x[:-1] != x[1:]) | (y[:-1] != y[1:])))


def test_change_words_read_exactly_65_labels_at_any_offset():
    """The IR intrinsics load x[t:t + 65] for any t, aligned or not, in every dtype."""
    rng = np.random.default_rng(7)
    for dtype in (np.uint8, np.int32, np.uint64):
        x = rng.integers(0, 2, 300).astype(dtype)
        y = rng.integers(0, 2, 300).astype(np.int64)
        for t in (0, 1, 3, 17, 300 - 65):
            got = _words(x, y, t)
            a, b = x[t:t + 65], y[t:t + 65]
            expect_single = np.packbits(a[:-1] != a[1:], bitorder="little").view(np.uint64)[0]
            expect_pair = np.packbits((a[:-1] != a[1:]) | (b[:-1] != b[1:]),
                                      bitorder="little").view(np.uint64)[0]
            assert got == (expect_single, expect_pair), (dtype, t)


@njit(cache=False)
def _words(x, y, t):
    return scan.change_word(x, t), scan.pair_change_word(x, y, t)
