"""Numba kernels behind :mod:`kit.metric`. Private: call :mod:`kit.metric`, which validates.

The overlap kernels return the non-zero entries of the intersection matrix as three arrays
``(a, b, count)``: pixel count of the intersection of instance ``a`` of one side with
instance ``b`` of the other, where index 0 means background (the pair (0, 0) is left out).
Pairs are counted in an open-addressing hash table keyed by ``(a << 32) | b``, one update
per run of equal pairs, so a label-image pair costs one scan of the pixels and memory
O(#pairs). The table is one int64 array of (key, count) slots, so a probe touches one cache
line; beside it an ``order`` array lists the slots in use in the order they were claimed, so
reading the entries out (and rehashing on growth) costs O(#pairs), not O(#slots).
"""
import numpy as np
from numba import njit

from kit._scan_numba import (CHUNK, WORDS, pair_change_bits, pair_change_bits_tail,
                              trailing_zeros)

N_THRESHOLDS = 10  # t_k = (10 + k) / 20 for k = 0..9, i.e. 0.50, 0.55, ..., 0.95
_EMPTY = -1
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: key * 2**64 / golden ratio
# Slots of a new table: at least the power of two >= 2 (CHUNK + 1), so one block's runs cannot
# fill it past half (the table grows between blocks), and 8192, room for 3583 pairs before the
# first growth: a shsy5y image has ~1000 pairs, and growing through 2048 and 4096 slots cost it
# ~13 us (6 %), more than the larger first table costs the sparser cell types.
_FIRST_SLOTS = max(8192, 1 << (2 * (CHUNK + 1) - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Hash table of pair counts: table[2 s] = key (or _EMPTY), table[2 s + 1] = count;
# order[:used] = the slots in use, in the order they were claimed.


@njit(cache=True, nogil=True, inline="always")
def _home(key, mask):
    return np.int64((np.uint64(key) * _HASH) >> np.uint64(40)) & mask


@njit(cache=True, nogil=True)
def _new_table(n_slots):
    """(table (2 n_slots,), order (n_slots // 2,)): empty, for at most n_slots // 2 entries."""
    return np.full(2 * n_slots, _EMPTY, np.int64), np.empty(n_slots // 2, np.int64)


@njit(cache=True, nogil=True, inline="always")
def _table_add(table, mask, key, count):
    """Add ``count`` to ``key``'s slot, claiming a free one if new; returns the slot it
    claimed, or -1 if the key was there. The caller lists a claimed slot in ``order``
    (in the run loop itself: storing to ``order`` in here made that loop 1.3x slower).

    The caller keeps the table at most half full (see :func:`_table_grow`).
    """
    s = _home(key, mask)
    claimed = -1
    while True:  # (this loop shape compiles to a tight probe; a while-condition did not)
        k = table[2 * s]
        if k == key:
            break
        if k == _EMPTY:
            table[2 * s] = key
            table[2 * s + 1] = 0
            claimed = s
            break
        s = (s + 1) & mask
    table[2 * s + 1] += count
    return claimed


@njit(cache=True, nogil=True)
def _table_insert(table, mask, order, used, key, count):
    """:func:`_table_add` outside the run loop: returns the new number of entries."""
    s = _table_add(table, mask, key, count)
    if s >= 0:
        order[used] = s
        used += 1
    return used


@njit(cache=True, nogil=True)
def _table_grow(table, order, used):
    """(table, order) with twice the slots and the same entries, listed in the same order."""
    out, out_order = _new_table(table.size)  # table.size = 2 * old slot count
    mask = table.size - 1
    for j in range(used):
        s = order[j]
        key = table[2 * s]
        t = _home(key, mask)
        while out[2 * t] != _EMPTY:
            t = (t + 1) & mask
        out[2 * t] = key
        out[2 * t + 1] = table[2 * s + 1]
        out_order[j] = t
    return out, out_order


@njit(cache=True, nogil=True)
def _table_pairs(table, order, used):
    """(a, b, count) int64 of every entry but the background pair (0, 0), in claim order."""
    n = 0
    for j in range(used):
        n += table[2 * order[j]] != 0
    a = np.empty(n, np.int64)
    b = np.empty(n, np.int64)
    c = np.empty(n, np.int64)
    k = 0
    for j in range(used):
        key = table[2 * order[j]]
        if key != 0:
            a[k] = key >> 32
            b[k] = key & 0xFFFFFFFF
            c[k] = table[2 * order[j] + 1]
            k += 1
    return a, b, c


# ---------------------------------------------------------------------------------------------
# Label images


@njit(cache=True, nogil=True, inline="always")
def _count_block_runs(gt, pred, bits, base, table, mask, order, used, run_start, g, p,
                      labels):
    """Add every run of (gt, pred) pairs that ends in the block starting at pixel ``base``
    (its change bits in ``bits``) to the table; returns the updated scan state.

    ``labels`` accumulates the bitwise OR of every label met: only a new pair can bring a new
    label, so it is updated on claims only (an OR there cost a quarter of what a min and a
    max did: one carried value instead of two in a loop short of registers)."""
    for w in range(bits.size):
        word = bits[w]
        while word != 0:
            i = base + 64 * w + trailing_zeros(word)
            word &= word - np.uint64(1)
            s = _table_add(table, mask, (g << 32) | p, i - run_start)
            if s >= 0:
                order[used] = s
                used += 1
                labels |= g | p
            run_start = i
            g = np.int64(gt[i])
            p = np.int64(pred[i])
    return used, run_start, g, p, labels


@njit(cache=True, nogil=True)
def _scan_blocks(gt, pred, table, order, bits, base, used, run_start, g, p, labels):
    """Count the runs of the full blocks from pixel ``base`` on, while the table has room
    for one more block's new pairs; returns the scan state where it stopped.

    Growing the table is left to the caller on purpose: with a call that replaces the table
    inside this loop the scan took 1.15x as long (hot data), though it never grew.
    """
    n = gt.size
    slots = table.size // 2
    mask = slots - 1
    while base + CHUNK <= n and 2 * (used + CHUNK + 1) <= slots:
        pair_change_bits(gt[base - 1:base + CHUNK], pred[base - 1:base + CHUNK], bits)
        used, run_start, g, p, labels = _count_block_runs(gt, pred, bits, base, table, mask,
                                                          order, used, run_start, g, p, labels)
        base += CHUNK
    return base, used, run_start, g, p, labels


@njit(cache=True, nogil=True)
def _pair_table(gt, pred):
    """(table, order, used, labels) of two flat label images; see :func:`label_overlaps`."""
    n = gt.size
    table, order = _new_table(_FIRST_SLOTS)
    used = 0
    labels = np.int64(0)
    if n == 0:
        return table, order, used, labels
    bits = np.zeros(WORDS, np.uint64)
    run_start = 0
    g = np.int64(gt[0])
    p = np.int64(pred[0])
    base = 1  # bit t of a block set: pixel base + t starts a new run
    # The table is at most half full after every block; it grows between blocks, out here.
    base, used, run_start, g, p, labels = _scan_blocks(gt, pred, table, order, bits, base,
                                                       used, run_start, g, p, labels)
    while base + CHUNK <= n:
        table, order = _table_grow(table, order, used)
        base, used, run_start, g, p, labels = _scan_blocks(gt, pred, table, order, bits, base,
                                                           used, run_start, g, p, labels)
    m = n - base
    if m > 0:  # the last, partial block
        while 2 * (used + m + 1) > table.size // 2:
            table, order = _table_grow(table, order, used)
        pair_change_bits_tail(gt[base - 1:base - 1 + m], gt[base:base + m],
                              pred[base - 1:base - 1 + m], pred[base:base + m], bits)
        used, run_start, g, p, labels = _count_block_runs(gt, pred, bits, base, table,
                                                          table.size // 2 - 1, order, used,
                                                          run_start, g, p, labels)
    if 2 * (used + 1) > table.size // 2:
        table, order = _table_grow(table, order, used)
    labels |= g | p
    used = _table_insert(table, table.size // 2 - 1, order, used, (g << 32) | p, n - run_start)
    return table, order, used, labels


@njit(cache=True, nogil=True, inline="always")
def keys_fit(labels):
    """Every label fits the pair key, 0 <= label < 2**31, given the OR of all labels."""
    return labels >> 31 == 0


@njit(cache=True, nogil=True)
def label_overlaps(gt, pred):
    """Intersections of two flat label images of equal size, in one vectorised scan.

    gt, pred: (N,) integer labels, 0 = background. Change bits of the pair (gt, pred) are
    computed CHUNK pixels at a time, so only pixels where a run of equal pairs ends cost more
    than a SIMD compare (see :mod:`kit._scan_numba`).
    Returns (a, b, count, labels): every distinct (gt label, pred label) pair but (0, 0),
    background 0 included, with its pixel count (int64), in the order the scan first meets
    the pairs (row-major order of their first pixel), and the bitwise OR of every label of
    both images (int64, labels cast to int64 first). The pairs are right only when
    :func:`keys_fit` (labels): negative labels or labels >= 2**31 must be compacted first.
    """
    table, order, used, labels = _pair_table(gt, pred)
    a, b, c = _table_pairs(table, order, used)
    return a, b, c, labels


@njit(cache=True, nogil=True)
def pair_areas(x, count):
    """Area of the label of every pair, and the number of distinct labels > 0.

    x: (P,) labels of one side of the pairs (0 = background), count: (P,) their pixel counts,
    every pixel of the side in exactly one pair. Returns (area (P,) int64: total count of label
    x[q], n_labels). Per-label sums in a dense table when the labels are small (the usual case),
    else after a sort, so a label near 2**31 costs no giant table.
    """
    p_n = x.size
    area = np.empty(p_n, np.int64)
    if p_n == 0:
        return area, 0
    top = x.max()
    n_labels = 0
    if top <= 4 * p_n + 65536:
        total = np.zeros(top + 1, np.int64)
        for q in range(p_n):
            total[x[q]] += count[q]
        for v in range(1, top + 1):
            n_labels += total[v] > 0
        for q in range(p_n):
            area[q] = total[x[q]]
        return area, n_labels
    order = np.argsort(x, kind="mergesort")
    j = 0
    while j < p_n:
        k = j
        s = 0
        while k < p_n and x[order[k]] == x[order[j]]:
            s += count[order[k]]
            k += 1
        for r in range(j, k):
            area[order[r]] = s
        n_labels += x[order[j]] > 0
        j = k
    return area, n_labels


@njit(cache=True, nogil=True)
def label_pairs(gt, pred):
    """:func:`label_overlaps` plus areas: (a, b, count, area_a, area_b, n_true, n_pred, labels).

    area_a[q] / area_b[q]: (P,) areas of gt label a[q] / pred label b[q]; n_true / n_pred:
    labels > 0 present in gt / pred. When a label does not fit the key (not
    :func:`keys_fit` (labels)) nothing but ``labels`` is meaningful: compact the labels and
    call again.
    """
    table, order, used, labels = _pair_table(gt, pred)
    return _pairs_with_areas(table, order, used, labels) + (labels,)


@njit(cache=True, nogil=True)
def _pairs_with_areas(table, order, used, labels):
    """(a, b, count, area_a, area_b, n_true, n_pred) of a pair table (empty if the labels
    did not fit the key)."""
    a, b, c = _table_pairs(table, order, used)
    if not keys_fit(labels):
        a = b = c = np.zeros(0, np.int64)
    area_a, n_true = pair_areas(a, c)
    area_b, n_pred = pair_areas(b, c)
    return a, b, c, area_a, area_b, n_true, n_pred


@njit(cache=True, nogil=True, inline="always")
def _count_match(tp, inter, union):
    """Add one pair to tp (N_THRESHOLDS,): a match at t_k when IoU > t_k exactly, i.e.
    ``20 * inter > (10 + k) * union`` in integers (thresholds ascend, so stop at the first miss)."""
    for k in range(N_THRESHOLDS):
        if 20 * inter > (10 + k) * union:
            tp[k] += 1
        else:
            break


@njit(cache=True, nogil=True)
def _score_small_labels(table, order, used, hi):
    """(tp, n_true, n_pred) straight from a pair table whose labels lie in 0..hi (small, the
    OR of all labels will do):
    per-label areas in dense (hi + 1,) tables while the entries are copied out in claim
    order, then one pass over the copies."""
    area_a = np.zeros(hi + 1, np.int64)
    area_b = np.zeros(hi + 1, np.int64)
    keys = np.empty(used, np.int64)
    counts = np.empty(used, np.int64)
    for j in range(used):
        key = table[2 * order[j]]
        count = table[2 * order[j] + 1]
        keys[j] = key
        counts[j] = count
        area_a[key >> 32] += count
        area_b[key & 0xFFFFFFFF] += count
    tp = np.zeros(N_THRESHOLDS, np.int64)
    for j in range(used):
        a = keys[j] >> 32
        b = keys[j] & 0xFFFFFFFF
        if a == 0 or b == 0:
            continue
        _count_match(tp, counts[j], area_a[a] + area_b[b] - counts[j])
    n_true = 0
    n_pred = 0
    for v in range(1, hi + 1):
        n_true += area_a[v] > 0
        n_pred += area_b[v] > 0
    return tp, n_true, n_pred


@njit(cache=True, nogil=True)
def score_labels(gt, pred):
    """One call for the common case: (tp (N_THRESHOLDS,), n_true, n_pred, labels) of two flat
    label images; see :func:`label_pairs` for ``labels``."""
    table, order, used, labels = _pair_table(gt, pred)
    if keys_fit(labels) and labels <= 4 * used + 65536:  # small labels: no pair arrays
        tp, n_true, n_pred = _score_small_labels(table, order, used, labels)
        return tp, n_true, n_pred, labels
    a, b, c, area_a, area_b, n_true, n_pred = _pairs_with_areas(table, order, used, labels)
    return match_counts(a, b, c, area_a, area_b), n_true, n_pred, labels


# ---------------------------------------------------------------------------------------------
# Run-length instances (stacks, RLE lists), which may overlap within a side


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
    table, order = _new_table(_FIRST_SLOTS)
    mask = _FIRST_SLOTS - 1
    used = 0
    for k in range(a_ptr.size - 1):
        for r in range(a_ptr[k], a_ptr[k + 1]):
            for px in range(a_starts[r], a_starts[r] + a_lengths[r]):
                for o in range(offs[px], offs[px + 1]):
                    key = (np.int64(k + 1) << 32) | owners[o]
                    used = _table_insert(table, mask, order, used, key, 1)
                    if 2 * (used + 1) > mask + 1:
                        table, order = _table_grow(table, order, used)
                        mask = table.size // 2 - 1
    return _table_pairs(table, order, used)


@njit(cache=True, nogil=True)
def match_counts(a, b, inter, area_a, area_b):
    """True positives at each threshold from pair intersections and areas.

    a, b, inter: (P,) pairs as returned by the overlap kernels; area_a, area_b: (P,) areas of
    instance a[q] and instance b[q]. Pairs with a background side (0) are skipped. A pair is
    a match at t_k when IoU > t_k exactly, i.e. ``20 * inter > (10 + k) * union`` in integers.
    For t >= 0.5 an instance has at most one partner with IoU > t, so counting pairs is the
    matching. Returns tp (N_THRESHOLDS,) int64.
    """
    tp = np.zeros(N_THRESHOLDS, np.int64)
    for q in range(a.size):
        if a[q] == 0 or b[q] == 0:
            continue
        _count_match(tp, inter[q], area_a[q] + area_b[q] - inter[q])
    return tp


@njit(cache=True, nogil=True)
def run_areas(ptr, lengths):
    """(K+1,) areas of run-length instances; index k + 1 is instance k, index 0 is 0."""
    out = np.zeros(ptr.size, np.int64)
    for k in range(ptr.size - 1):
        for r in range(ptr[k], ptr[k + 1]):
            out[k + 1] += lengths[r]
    return out
