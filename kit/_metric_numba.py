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
    """Add one pair to tp (N_THRESHOLDS,): a candidate at t_k when IoU > t_k exactly, i.e.
    ``20 * inter > (10 + k) * union`` in integers (thresholds ascend, so stop at the first
    miss). Returns the pair's level: how many thresholds it clears."""
    k = 0
    while k < N_THRESHOLDS and 20 * inter > (10 + k) * union:
        tp[k] += 1
        k += 1
    return k


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

_DIGIT_BITS = 11  # radix sort digit: 2048 buckets


@njit(cache=True, nogil=True)
def _order_by_start(starts):
    """(R,) int64 order that sorts ``starts`` (non-negative) ascending, stable: an LSD radix
    sort, O(R) per 11-bit digit (two digits cover a 520x704 image), no comparison sort."""
    n = starts.size
    order = np.arange(n)
    if n < 2:
        return order
    sorted_already = True
    top = starts[0]
    for r in range(1, n):
        sorted_already &= starts[r - 1] <= starts[r]
        top = max(top, starts[r])
    if sorted_already:
        return order
    tmp = np.empty(n, np.int64)
    count = np.empty((1 << _DIGIT_BITS) + 1, np.int64)
    shift = 0
    while (top >> shift) > 0:
        count[:] = 0
        for r in range(n):
            count[((starts[order[r]] >> shift) & ((1 << _DIGIT_BITS) - 1)) + 1] += 1
        for d in range(1 << _DIGIT_BITS):
            count[d + 1] += count[d]
        for r in range(n):
            d = (starts[order[r]] >> shift) & ((1 << _DIGIT_BITS) - 1)
            tmp[count[d]] = order[r]
            count[d] += 1
        order, tmp = tmp, order
        shift += _DIGIT_BITS
    return order


@njit(cache=True, nogil=True)
def _runs_by_start(ptr, starts, lengths):
    """(start, end, owner) (R,) int64 of every run, sorted by start; end is exclusive and
    owner the run's 1-based instance."""
    owner = np.empty(starts.size, np.int64)
    for k in range(ptr.size - 1):
        owner[ptr[k]:ptr[k + 1]] = k + 1
    order = _order_by_start(starts)
    s = np.empty(starts.size, np.int64)
    e = np.empty(starts.size, np.int64)
    o = np.empty(starts.size, np.int64)
    for r in range(starts.size):
        q = order[r]
        s[r] = starts[q]
        e[r] = starts[q] + lengths[q]
        o[r] = owner[q]
    return s, e, o


@njit(cache=True, nogil=True, inline="always")
def _close_and_count(start, end, owner_key, other_open, n_other_open, other_end, other_owner,
                     shift, table, mask, order, used):
    """A run [start, end) of one side starts: drop the other side's open runs that ended
    (in place) and add the overlap with each one still open to the table, keyed
    ``owner_key | (other_owner << shift)``. Returns (open runs kept, used)."""
    kept = 0
    for x in range(n_other_open):
        r = other_open[x]
        if other_end[r] > start:
            other_open[kept] = r
            kept += 1
            s = _table_add(table, mask, owner_key | (other_owner[r] << shift),
                           min(end, other_end[r]) - start)
            if s >= 0:
                order[used] = s
                used += 1
    return kept, used


@njit(cache=True, nogil=True)
def _sweep_runs(sa, ea, oa, sb, eb, ob, open_a, open_b, table, order, state):
    """Sweep the runs of both sides (sorted by start) from ``state`` = [i, j, n_open_a,
    n_open_b, used] on, while the table has room for every pair the next run can add; the
    state is updated in place. Growing the table is the caller's (a table replaced inside
    this loop made it ~7x slower)."""
    i, j, n_open_a, n_open_b, used = state[0], state[1], state[2], state[3], state[4]
    slots = table.size // 2
    mask = slots - 1
    while i < sa.size or j < sb.size:
        if j == sb.size or (i < sa.size and sa[i] <= sb[j]):
            if 2 * (used + n_open_b + 1) > slots:
                break
            n_open_b, used = _close_and_count(sa[i], ea[i], oa[i] << 32, open_b, n_open_b, eb,
                                              ob, 0, table, mask, order, used)
            open_a[n_open_a] = i
            n_open_a += 1
            i += 1
        else:
            if 2 * (used + n_open_a + 1) > slots:
                break
            n_open_a, used = _close_and_count(sb[j], eb[j], ob[j], open_a, n_open_a, ea, oa,
                                              32, table, mask, order, used)
            open_b[n_open_b] = j
            n_open_b += 1
            j += 1
    state[0], state[1], state[2], state[3], state[4] = i, j, n_open_a, n_open_b, used


@njit(cache=True, nogil=True)
def run_overlaps(a_ptr, a_starts, a_lengths, b_ptr, b_starts, b_lengths):
    """Intersections of two sets of run-length instances that may overlap within a side.

    Instance k of a side (1-based: k = index + 1) owns runs ``starts[ptr[k-1]:ptr[k]]``
    (0-based pixel starts, lengths >= 1). Returns (a, b, count) (P,) int64 for every pair with
    a non-empty intersection (no background), in the order first met.

    Works on runs, never on pixels: both sides' runs are sorted by start and swept together;
    each side keeps the list of its runs that may still be open, and a run that starts is
    intersected with the other side's open runs (those that ended are dropped on the way).
    Every intersecting run pair is met once, when the later one starts; the cost is
    O(runs + intersecting run pairs) after the sort.
    """
    sa, ea, oa = _runs_by_start(a_ptr, a_starts, a_lengths)
    sb, eb, ob = _runs_by_start(b_ptr, b_starts, b_lengths)
    open_a = np.empty(sa.size, np.int64)
    open_b = np.empty(sb.size, np.int64)
    table, order = _new_table(_FIRST_SLOTS)
    state = np.zeros(5, np.int64)  # i, j, n_open_a, n_open_b, used
    _sweep_runs(sa, ea, oa, sb, eb, ob, open_a, open_b, table, order, state)
    while state[0] < sa.size or state[1] < sb.size:
        table, order = _table_grow(table, order, state[4])
        _sweep_runs(sa, ea, oa, sb, eb, ob, open_a, open_b, table, order, state)
    return _table_pairs(table, order, state[4])


# ---------------------------------------------------------------------------------------------
# Matching


@njit(cache=True, nogil=True)
def _has_repeat(x):
    """Whether any value occurs twice in x (P,)."""
    y = np.sort(x)
    for q in range(1, y.size):
        if y[q] == y[q - 1]:
            return True
    return False


@njit(cache=True, nogil=True)
def _augment(u0, ptr, adj, match_a, match_b, seen, stamp, stack_u, stack_e):
    """Look for an augmenting path from the free left vertex u0 (iterative depth-first
    search, Kuhn's algorithm) and flip it; returns whether one was found."""
    depth = 0
    stack_u[0] = u0
    stack_e[0] = ptr[u0]
    while depth >= 0:
        u = stack_u[depth]
        e = stack_e[depth]
        if e == ptr[u + 1]:
            depth -= 1
            continue
        stack_e[depth] = e + 1
        v = adj[e]
        if seen[v] == stamp:
            continue
        seen[v] = stamp
        w = match_b[v]
        if w < 0:  # free: flip the path, each level's last edge tried
            for d in range(depth, -1, -1):
                ud = stack_u[d]
                vd = adj[stack_e[d] - 1]
                match_a[ud] = vd
                match_b[vd] = ud
            return True
        depth += 1
        stack_u[depth] = w
        stack_e[depth] = ptr[w]
    return False


@njit(cache=True, nogil=True)
def max_matching(left, right, n_left, n_right):
    """Size of a maximum one-to-one matching of a bipartite graph (see :func:`matching`)."""
    size = 0
    for v in matching(left, right, n_left, n_right):
        size += v >= 0
    return size


@njit(cache=True, nogil=True)
def matching(left, right, n_left, n_right):
    """A maximum one-to-one matching of a bipartite graph: (n_left,) int64, the right vertex
    matched to each left vertex or -1.

    left, right: (E,) int64 edge ends, 0 <= left < n_left, 0 <= right < n_right. Greedy
    start, then Kuhn's augmenting paths from every vertex the greedy pass left free.
    """
    ptr = np.zeros(n_left + 1, np.int64)
    for e in range(left.size):
        ptr[left[e] + 1] += 1
    for u in range(n_left):
        ptr[u + 1] += ptr[u]
    fill = ptr[:-1].copy()
    adj = np.empty(left.size, np.int64)
    for e in range(left.size):
        adj[fill[left[e]]] = right[e]
        fill[left[e]] += 1
    match_a = np.full(n_left, -1, np.int64)
    match_b = np.full(n_right, -1, np.int64)
    for u in range(n_left):
        for e in range(ptr[u], ptr[u + 1]):
            if match_b[adj[e]] < 0:
                match_a[u] = adj[e]
                match_b[adj[e]] = u
                break
    seen = np.full(n_right, -1, np.int64)
    stack_u = np.empty(n_left + 1, np.int64)
    stack_e = np.empty(n_left + 1, np.int64)
    for u in range(n_left):
        if match_a[u] < 0 and ptr[u + 1] > ptr[u]:
            _augment(u, ptr, adj, match_a, match_b, seen, u, stack_u, stack_e)
    return match_a


@njit(cache=True, nogil=True)
def _dense_index(x):
    """(x mapped to 0..n-1 by value, n distinct values) for x (P,)."""
    values = np.unique(x)
    return np.searchsorted(values, x).astype(np.int64), values.size


@njit(cache=True, nogil=True)
def match_counts(a, b, inter, area_a, area_b):
    """True positives at each threshold from pair intersections and areas.

    a, b, inter: (P,) pairs as returned by the overlap kernels; area_a, area_b: (P,) areas of
    instance a[q] and instance b[q]. Pairs with a background side (0) are skipped. A pair is
    a candidate at t_k when IoU > t_k exactly, i.e. ``20 * inter > (10 + k) * union`` in
    integers, and TP(t_k) is the size of a maximum one-to-one matching of the candidates
    (every instance used at most once). Returns tp (N_THRESHOLDS,) int64.

    When no instance has two candidates at t = 0.5 (always so when neither side overlaps
    itself: two disjoint masks cannot both have IoU > 0.5 with a third) the candidates are
    the matching and are counted directly; only otherwise is a matching computed, on the
    candidate pairs alone (a few per instance), once per threshold.
    """
    ca = np.empty(a.size, np.int64)  # the candidates at t = 0.5 and their levels
    cb = np.empty(a.size, np.int64)
    level = np.empty(a.size, np.int64)
    tp = np.zeros(N_THRESHOLDS, np.int64)
    m = 0
    for q in range(a.size):
        if a[q] == 0 or b[q] == 0:
            continue
        lv = _count_match(tp, inter[q], area_a[q] + area_b[q] - inter[q])
        if lv > 0:
            ca[m] = a[q]
            cb[m] = b[q]
            level[m] = lv
            m += 1
    ca, cb, level = ca[:m], cb[:m], level[:m]
    if not (_has_repeat(ca) or _has_repeat(cb)):
        return tp
    ia, n_a = _dense_index(ca)
    ib, n_b = _dense_index(cb)
    for k in range(N_THRESHOLDS):
        keep = level > k
        tp[k] = max_matching(ia[keep], ib[keep], n_a, n_b) if keep.any() else 0
    return tp


@njit(cache=True, nogil=True)
def run_areas(ptr, lengths):
    """(K+1,) areas of run-length instances; index k + 1 is instance k, index 0 is 0."""
    out = np.zeros(ptr.size, np.int64)
    for k in range(ptr.size - 1):
        for r in range(ptr[k], ptr[k + 1]):
            out[k + 1] += lengths[r]
    return out
