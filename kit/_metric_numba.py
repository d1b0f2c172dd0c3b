"""Numba kernels behind :mod:`kit.metric`. Private: call :mod:`kit.metric`, which validates.

Both overlap kernels return the non-zero entries of the intersection matrix as three
arrays ``(a, b, count)``: pixel count of the intersection of instance ``a`` of one side
with instance ``b`` of the other, where index 0 means background. Pairs are collected in an
open-addressing hash table keyed by ``(a << 32) | b``, flushed once per run of equal
pairs, so a label-image pair costs one scan of the pixels and memory O(#pairs).
"""
import numpy as np
from numba import njit

from kit._rle_numba import lowest_set_byte

CHUNK = 512  # pixels per block of change flags: flags stay in L1, the hash table small
N_THRESHOLDS = 10  # t_k = (10 + k) / 20 for k = 0..9, i.e. 0.50, 0.55, ..., 0.95
_EMPTY = -1


@njit(cache=True, nogil=True)
def _slot(keys, key):
    mask = keys.size - 1
    h = (np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    s = np.int64(h) & mask
    while keys[s] != _EMPTY and keys[s] != key:
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True)
def _grow(keys, vals):
    new_keys = np.full(keys.size * 2, _EMPTY, np.int64)
    new_vals = np.zeros(keys.size * 2, np.int64)
    for s in range(keys.size):
        if keys[s] != _EMPTY:
            t = _slot(new_keys, keys[s])
            new_keys[t] = keys[s]
            new_vals[t] = vals[s]
    return new_keys, new_vals


@njit(cache=True, nogil=True)
def _unpack(keys, vals):
    n = 0
    for s in range(keys.size):
        if keys[s] != _EMPTY:
            n += 1
    a = np.empty(n, np.int64)
    b = np.empty(n, np.int64)
    c = np.empty(n, np.int64)
    k = 0
    for s in range(keys.size):
        if keys[s] != _EMPTY:
            a[k] = keys[s] >> 32
            b[k] = keys[s] & 0xFFFFFFFF
            c[k] = vals[s]
            k += 1
    return a, b, c


@njit(cache=True, nogil=True)
def _flag_pair_changes(a0, a1, b0, b1, flags):
    """flags[t] = (a0[t], b0[t]) != (a1[t], b1[t]); plain slices so LLVM vectorises it."""
    for t in range(a0.size):
        flags[t] = np.uint8(((a0[t] ^ a1[t]) | (b0[t] ^ b1[t])) != 0)


@njit(cache=True, nogil=True)
def _add(keys, vals, key, count, used):
    s = _slot(keys, key)
    if keys[s] == _EMPTY:
        keys[s] = key
        used += 1
    vals[s] += count
    return used


@njit(cache=True, nogil=True)
def label_overlaps(gt, pred):
    """Intersections of two flat label images of equal size, in one vectorised scan.

    Change flags of the pair (gt, pred) are computed CHUNK pixels at a time and read 8 at a
    time, so only pixels where a run of equal pairs ends cost more than a compare.
    Returns (a, b, count, lo, hi): every distinct (gt label, pred label) pair but (0, 0),
    background 0 included, with its pixel count (int64), and the min / max label of both images
    (lo < 0: negative labels; labels >= 2**31 do not fit the key and must be compacted).
    """
    keys = np.full(1024, _EMPTY, np.int64)
    vals = np.zeros(1024, np.int64)
    used = 0
    n = gt.size
    lo = np.int64(0)
    hi = np.int64(0)
    if n == 0:
        a, b, c = _unpack(keys, vals)
        return a, b, c, lo, hi
    flags = np.zeros(CHUNK, np.uint8)
    words = flags.view(np.uint64)
    run_start = 0
    g = np.int64(gt[0])
    p = np.int64(pred[0])
    base = 1  # flags[t] set: pixel base + t starts a new run
    while base < n:
        m = min(CHUNK, n - base)
        while 2 * (used + m + 1) > keys.size:  # grow between chunks, never inside the run loop
            keys, vals = _grow(keys, vals)
        _flag_pair_changes(gt[base - 1:base - 1 + m], gt[base:base + m],
                           pred[base - 1:base - 1 + m], pred[base:base + m], flags)
        for t in range(m, CHUNK):
            flags[t] = 0
        for w in range((m + 7) // 8):
            wd = words[w]
            while wd != 0:
                i = base + 8 * w + lowest_set_byte(wd)
                wd &= wd - np.uint64(1)
                if g != p or g != 0:  # background/background runs count for nothing
                    lo = min(lo, min(g, p))
                    hi = max(hi, max(g, p))
                    used = _add(keys, vals, (g << 32) | p, i - run_start, used)
                run_start = i
                g = np.int64(gt[i])
                p = np.int64(pred[i])
        base += m
    if 2 * (used + 1) > keys.size:
        keys, vals = _grow(keys, vals)
    lo = min(lo, min(g, p))
    hi = max(hi, max(g, p))
    _add(keys, vals, (g << 32) | p, n - run_start, used)
    a, b, c = _unpack(keys, vals)
    return a, b, c, lo, hi


@njit(cache=True, nogil=True)
def run_overlaps(a_ptr, a_starts, a_lengths, b_ptr, b_starts, b_lengths, n_pixels):
    """Intersections of two sets of run-length instances that may overlap within a side.

    Instance k of a side (1-based: k = index + 1) owns runs ``starts[ptr[k-1]:ptr[k]]``.
    Returns (a, b, count) for every pair with a non-empty intersection (no background).
    Builds a pixel -> owners table for side b, then walks the pixels of side a.
    """
    n_b_owners = np.zeros(n_pixels + 1, np.int64)
    for k in range(b_ptr.size - 1):
        for r in range(b_ptr[k], b_ptr[k + 1]):
            for px in range(b_starts[r], b_starts[r] + b_lengths[r]):
                n_b_owners[px + 1] += 1
    for px in range(n_pixels):
        n_b_owners[px + 1] += n_b_owners[px]
    offs = n_b_owners  # prefix sums: owners of pixel px are owners[offs[px]:offs[px+1]]
    owners = np.empty(offs[n_pixels], np.int64)
    fill = offs[:-1].copy()
    for k in range(b_ptr.size - 1):
        for r in range(b_ptr[k], b_ptr[k + 1]):
            for px in range(b_starts[r], b_starts[r] + b_lengths[r]):
                owners[fill[px]] = k + 1
                fill[px] += 1
    keys = np.full(1024, _EMPTY, np.int64)
    vals = np.zeros(1024, np.int64)
    used = 0
    for k in range(a_ptr.size - 1):
        for r in range(a_ptr[k], a_ptr[k + 1]):
            for px in range(a_starts[r], a_starts[r] + a_lengths[r]):
                for o in range(offs[px], offs[px + 1]):
                    used = _add(keys, vals, (np.int64(k + 1) << 32) | owners[o], 1, used)
                    if 2 * used > keys.size:
                        keys, vals = _grow(keys, vals)
    return _unpack(keys, vals)


@njit(cache=True, nogil=True)
def match_counts(a, b, c, area_a, area_b):
    """True positives at each threshold from intersections and areas.

    a, b, c: (P,) pairs as returned by the overlap kernels; area_a (A+1,), area_b (B+1,)
    pixel areas indexed by label (index 0 ignored). A pair is a match at t_k when
    IoU > t_k exactly, i.e. ``20 * inter > (10 + k) * union`` in integers. For t >= 0.5 an
    instance has at most one partner with IoU > t, so counting pairs is the matching.
    Returns tp (N_THRESHOLDS,) int64.
    """
    tp = np.zeros(N_THRESHOLDS, np.int64)
    for q in range(a.size):
        if a[q] == 0 or b[q] == 0:
            continue
        inter = c[q]
        union = area_a[a[q]] + area_b[b[q]] - inter
        for k in range(N_THRESHOLDS):
            if 20 * inter > (10 + k) * union:
                tp[k] += 1
            else:
                break
    return tp


@njit(cache=True, nogil=True)
def areas_from_pairs(a, b, c):
    """Per-label areas of both label images from their pair counts (index = label)."""
    max_a = 0
    max_b = 0
    for q in range(a.size):
        max_a = max(max_a, a[q])
        max_b = max(max_b, b[q])
    area_a = np.zeros(max_a + 1, np.int64)
    area_b = np.zeros(max_b + 1, np.int64)
    for q in range(a.size):
        area_a[a[q]] += c[q]
        area_b[b[q]] += c[q]
    return area_a, area_b


@njit(cache=True, nogil=True)
def run_areas(ptr, lengths):
    """(K+1,) areas of run-length instances; index k + 1 is instance k, index 0 is 0."""
    out = np.zeros(ptr.size, np.int64)
    for k in range(ptr.size - 1):
        for r in range(ptr[k], ptr[k + 1]):
            out[k + 1] += lengths[r]
    return out
