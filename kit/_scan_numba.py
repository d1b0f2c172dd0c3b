"""Bit-level helpers of the run scans in :mod:`kit._rle_numba` and :mod:`kit._metric_numba`.

Both scans find where runs of equal pixels end in a flat (row-major) image the same way:
CHUNK pixels at a time they build 64-pixel bit words ("this pixel differs from the one
before": :func:`change_bits`, :func:`pair_change_bits`), then visit only the set bits,
:func:`trailing_zeros` giving the next one. So the per-pixel cost is a SIMD compare and only
run boundaries cost more.

A word is built by an LLVM IR intrinsic (:func:`change_word`, :func:`pair_change_word`): one
load of 65 consecutive labels, compared with itself shifted by one as two <64 x iN> vectors,
the <64 x i1> result bitcast to the uint64. LLVM turns that into vector compares into mask
registers, with the shifted operand made from the loaded registers instead of a second,
misaligned load: the pass then runs at the speed of plain reading (a numba loop over
``x[t - 1] != x[t]`` took 1.3x as long).

Calling convention of the full-block builders: ``a = x[base - 1:base + CHUNK]`` (CHUNK + 1
labels); bit r of bits[q] set means pixel ``base + 64 q + r`` starts a new run. The image's
last, partial block goes through :func:`pair_change_bits_tail` instead, called once after the
block loop (a second call site inside the loop slowed the loop down).

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


def _is_label_vector(ty) -> bool:
    return (isinstance(ty, types.Array) and ty.ndim == 1 and ty.layout == "C"
            and isinstance(ty.dtype, (types.Integer, types.Boolean)))


def _shift_changes(context, builder, array_type, array, t):
    """<64 x i1>: x[t + k] != x[t + k + 1] for k = 0..63, from one load of x[t:t + 65]."""
    data = context.make_array(array_type)(context, builder, array).data
    vec65 = ir.VectorType(context.get_data_type(array_type.dtype), 65)
    v = builder.load(builder.bitcast(builder.gep(data, [t]), vec65.as_pointer()), align=1)
    idx = ir.VectorType(ir.IntType(32), 64)
    undef = ir.Constant(vec65, ir.Undefined)
    first = builder.shuffle_vector(v, undef, ir.Constant(idx, list(range(64))))
    second = builder.shuffle_vector(v, undef, ir.Constant(idx, list(range(1, 65))))
    return builder.icmp_unsigned("!=", first, second)


@intrinsic
def change_word(typingctx, a, t):
    """uint64 whose bit k is a[t + k] != a[t + k + 1] (k = 0..63); needs t + 65 <= a.size."""
    if not _is_label_vector(a):
        return None

    def codegen(context, builder, signature, args):
        changed = _shift_changes(context, builder, signature.args[0], args[0], args[1])
        return builder.bitcast(changed, ir.IntType(64))

    return types.uint64(a, types.intp), codegen


@intrinsic
def pair_change_word(typingctx, a, b, t):
    """uint64 whose bit k is (a, b)[t + k] != (a, b)[t + k + 1]; needs t + 65 <= a.size, b.size."""
    if not (_is_label_vector(a) and _is_label_vector(b)):
        return None

    def codegen(context, builder, signature, args):
        changed = builder.or_(
            _shift_changes(context, builder, signature.args[0], args[0], args[2]),
            _shift_changes(context, builder, signature.args[1], args[1], args[2]))
        return builder.bitcast(changed, ir.IntType(64))

    return types.uint64(a, b, types.intp), codegen


@njit(cache=True, nogil=True)
def change_bits(a, bits):
    """bits (WORDS,) uint64 of a full block: bit r of bits[q] = a[t] != a[t + 1], t = 64 q + r;
    a (CHUNK + 1,) = x[base - 1:base + CHUNK]."""
    for q in range(bits.size):
        bits[q] = change_word(a, 64 * q)


@njit(cache=True, nogil=True)
def pair_change_bits(a, b, bits):
    """bits (WORDS,) uint64 of a full block: bit r of bits[q] = (a, b)[t] != (a, b)[t + 1],
    t = 64 q + r; a, b (CHUNK + 1,) = gt / pred[base - 1:base + CHUNK]."""
    for q in range(bits.size):
        bits[q] = pair_change_word(a, b, 64 * q)


@njit(cache=True, nogil=True)
def pair_change_bits_tail(a0, a1, b0, b1, bits):
    """Bits of a last, partial block of m < CHUNK pixels: a0 = x[base - 1:base - 1 + m],
    a1 = x[base:base + m] (b0, b1 likewise for the second image); bits past m are 0.
    A single image's last block: pass (a0, a1, a0, a0), the second pair never changes."""
    m = a0.size
    for q in range(bits.size):
        acc = np.uint64(0)
        for r in range(64):
            t = 64 * q + r
            if t < m:
                acc |= np.uint64(((a0[t] ^ a1[t]) | (b0[t] ^ b1[t])) != 0) << np.uint64(r)
        bits[q] = acc
