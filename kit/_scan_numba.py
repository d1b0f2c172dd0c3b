"""Bit-level helpers of the run scans in :mod:`kit._rle_numba` and :mod:`kit._metric_numba`.

Both scans find where runs of equal pixels end in a flat (row-major) image the same way:
CHUNK pixels at a time, a plain loop that LLVM vectorises builds 64-pixel bit words ("this
pixel differs from the one before": :func:`change_bits`, :func:`pair_change_bits`), and the
scan visits only the set bits, :func:`trailing_zeros` giving the next one. So the per-pixel
cost is a SIMD compare and only run boundaries cost more.

Calling convention of the bit builders: ``a0 = x[base - 1:base - 1 + m]`` and
``a1 = x[base:base + m]`` (slices, not indices: numba drops its negative-index checks on
``range`` induction variables, which is what lets the loops vectorise). Bit r of bits[q] set
means pixel ``base + 64 q + r`` starts a new run. Scans call the full-block builder from
one place in their block loop and :func:`pair_change_bits_tail` once after it: a second call
site inside the loop measurably slowed the vectorised loop (about 30 %).

Private: no input checks.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

CHUNK = 512  # pixels per block (a multiple of 64): bit words and pair table stay in L1
WORDS = CHUNK // 64


@intrinsic
def trailing_zeros(typingctx, word):
    """Index (0..63) of the lowest set bit of a non-zero uint64, as int64 (LLVM ``cttz``)."""
    if word != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))  # 1: zero input undefined

    return types.int64(types.uint64), codegen


@njit(cache=True, nogil=True)
def change_bits(a0, a1, bits):
    """bits (WORDS,) uint64: bit r of bits[q] = a0[t] != a1[t], t = 64 q + r; a0, a1 (CHUNK,)."""
    for q in range(bits.size):
        acc = np.uint64(0)
        for r in range(64):
            t = 64 * q + r
            acc |= np.uint64(a0[t] != a1[t]) << np.uint64(r)
        bits[q] = acc


@njit(cache=True, nogil=True)
def pair_change_bits(a0, a1, b0, b1, bits):
    """bits (WORDS,) uint64: bit r of bits[q] = (a0[t], b0[t]) != (a1[t], b1[t]),
    t = 64 q + r; all four (CHUNK,)."""
    for q in range(bits.size):
        acc = np.uint64(0)
        for r in range(64):
            t = 64 * q + r
            acc |= np.uint64(((a0[t] ^ a1[t]) | (b0[t] ^ b1[t])) != 0) << np.uint64(r)
        bits[q] = acc


@njit(cache=True, nogil=True)
def pair_change_bits_tail(a0, a1, b0, b1, bits):
    """:func:`pair_change_bits` of a last, partial block of m < CHUNK pixels; bits past m 0.
    A single image's last block: pass (x0, x1, x0, x0), the second pair never changes."""
    m = a0.size
    for q in range(bits.size):
        acc = np.uint64(0)
        for r in range(64):
            t = 64 * q + r
            if t < m:
                acc |= np.uint64(((a0[t] ^ a1[t]) | (b0[t] ^ b1[t])) != 0) << np.uint64(r)
        bits[q] = acc
