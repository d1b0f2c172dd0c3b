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
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint64])
def test_change_bits_match_numpy(m, dtype):
    """Full blocks (m == CHUNK) and the last, partial block (the *_tail builders)."""
    rng = np.random.default_rng(m)
    x = rng.integers(0, 3, m + 1).astype(dtype)
    y = rng.integers(0, 2, m + 1).astype(np.int32)
    full = m == scan.CHUNK
    bits = np.full(scan.WORDS, np.uint64(2**64 - 1))  # stale bits must be overwritten
    if full:
        scan.change_bits(x[:-1], x[1:], bits)
    else:  # a single image's last block, as kit._rle_numba.scan_runs calls it
        scan.pair_change_bits_tail(x[:-1], x[1:], x[:-1], x[:-1], bits)
    np.testing.assert_array_equal(bits, _expected_bits(x[:-1] != x[1:]))
    pair = scan.pair_change_bits if full else scan.pair_change_bits_tail
    pair(x[:-1], x[1:], y[:-1], y[1:], bits)
    np.testing.assert_array_equal(bits, _expected_bits((x[:-1] != x[1:]) | (y[:-1] != y[1:])))
