"""Numba kernels behind :mod:`kit.rle`. Private: call :mod:`kit.rle`, which validates inputs.

Every kernel works on the ROW-MAJOR flattened image (index ``i = row * width + col``) and
reports runs with 0-based starts; :mod:`kit.rle` adds the 1 of the Kaggle format when it
writes digits (done here, in :func:`runs_to_ascii`).
"""
import numpy as np
from numba import njit

from kit._scan_numba import CHUNK, WORDS, change_bits, pair_change_bits_tail, trailing_zeros

# Error codes returned by parse_rle_bytes (0 = ok). kit.rle turns them into messages.
ERR_NOT_INT = 1
ERR_ODD = 2
ERR_START_LT_1 = 3
ERR_LENGTH_LT_1 = 4
ERR_PAST_END = 5
ERR_UNSORTED = 6


@njit(cache=True, nogil=True)
def _grow3(x, y, z, n, cap):
    x2 = np.empty(cap, np.int64)
    y2 = np.empty(cap, np.int64)
    z2 = np.empty(cap, np.int64)
    x2[:n] = x[:n]
    y2[:n] = y[:n]
    z2[:n] = z[:n]
    return x2, y2, z2


@njit(cache=True, nogil=True, inline="always")
def _append_run(vals, starts, lens, nr, v, start, end, lo, hi):
    """Append run [start, end) of label v (non-zero) at nr; returns (nr + 1, lo, hi)."""
    vals[nr] = v
    starts[nr] = start
    lens[nr] = end - start
    return nr + 1, min(lo, v), max(hi, v)


@njit(cache=True, nogil=True, inline="always")
def _keep_block_runs(flat, bits, base, vals, starts, lens, nr, run_start, v, lo, hi):
    """Append every non-zero run that ends in the block starting at pixel ``base`` (its
    change bits in ``bits``); returns the updated scan state. The caller makes room."""
    for w in range(bits.size):
        word = bits[w]
        while word != 0:
            i = base + 64 * w + trailing_zeros(word)
            word &= word - np.uint64(1)
            if v != 0:
                nr, lo, hi = _append_run(vals, starts, lens, nr, v, run_start, i, lo, hi)
            run_start = i
            v = np.int64(flat[i])
    return nr, run_start, v, lo, hi


@njit(cache=True, nogil=True)
def _scan_label_blocks(flat, bits, base, vals, starts, lens, nr, run_start, v, lo, hi):
    """Append the runs of the full blocks from pixel ``base`` on, while the run arrays have
    room for one more block's runs; returns the scan state where it stopped.

    Growing the arrays is left to the caller: a call that replaces them inside this loop,
    though rarely taken, made the scan 1.2x as long (hot data).
    """
    n = flat.size
    cap = vals.size
    while base + CHUNK <= n and nr + CHUNK + 1 <= cap:
        change_bits(flat[base - 1:base + CHUNK], bits)
        nr, run_start, v, lo, hi = _keep_block_runs(flat, bits, base, vals, starts, lens, nr,
                                                    run_start, v, lo, hi)
        base += CHUNK
    return base, nr, run_start, v, lo, hi


@njit(cache=True, nogil=True)
def scan_runs(flat):
    """Every non-zero run of a flat label image, in scan order, in ONE vectorised pass.

    flat: (H*W,) integer labels. Change bits are computed CHUNK pixels at a time (see
    :mod:`kit._scan_numba`), so the per-pixel work is one vectorised compare. Returns
    (values, starts, lengths, lo, hi): int64 runs (0-based starts) and the min / max label
    seen (0 included; lo < 0 flags negative labels).
    """
    n = flat.size
    cap = 4096
    vals = np.empty(cap, np.int64)
    starts = np.empty(cap, np.int64)
    lens = np.empty(cap, np.int64)
    nr = 0
    lo = np.int64(0)
    hi = np.int64(0)
    if n == 0:
        return vals[:0], starts[:0], lens[:0], lo, hi
    bits = np.zeros(WORDS, np.uint64)
    run_start = 0
    v = np.int64(flat[0])
    base = 1  # bit t of a block set: pixel base + t starts a new run
    # The run arrays have room for one more block after every block; they grow out here.
    base, nr, run_start, v, lo, hi = _scan_label_blocks(flat, bits, base, vals, starts, lens,
                                                        nr, run_start, v, lo, hi)
    while base + CHUNK <= n:
        vals, starts, lens = _grow3(vals, starts, lens, nr, 2 * (nr + CHUNK + 1))
        base, nr, run_start, v, lo, hi = _scan_label_blocks(flat, bits, base, vals, starts,
                                                            lens, nr, run_start, v, lo, hi)
    m = n - base
    if m > 0:  # the last, partial block
        if nr + m + 1 > vals.size:
            vals, starts, lens = _grow3(vals, starts, lens, nr, 2 * (nr + m + 1))
        a0 = flat[base - 1:base - 1 + m]
        pair_change_bits_tail(a0, flat[base:base + m], a0, a0, bits)
        nr, run_start, v, lo, hi = _keep_block_runs(flat, bits, base, vals, starts, lens, nr,
                                                    run_start, v, lo, hi)
    if v != 0:
        if nr + 1 > vals.size:
            vals, starts, lens = _grow3(vals, starts, lens, nr, nr + 1)
        nr, lo, hi = _append_run(vals, starts, lens, nr, v, run_start, n, lo, hi)
    return vals[:nr], starts[:nr], lens[:nr], lo, hi


@njit(cache=True, nogil=True)
def group_runs(vals, starts, lens, max_label):
    """Counting sort of runs (not pixels) by label; stable, so starts stay ascending.

    Returns (labels, ptr, starts, lengths): ``labels`` (K,) the present labels ascending;
    runs of ``labels[k]`` are ``starts[ptr[k]:ptr[k+1]]``.
    """
    counts = np.zeros(max_label + 2, np.int64)
    for r in range(vals.size):
        counts[vals[r] + 1] += 1
    n_labels = 0
    for v in range(1, max_label + 1):
        if counts[v + 1] > 0:
            n_labels += 1
    labels = np.empty(n_labels, np.int64)
    k = 0
    for v in range(1, max_label + 1):
        if counts[v + 1] > 0:
            labels[k] = v
            k += 1
        counts[v + 1] += counts[v]
    slot = counts
    out_s = np.empty(vals.size, np.int64)
    out_l = np.empty(vals.size, np.int64)
    for r in range(vals.size):
        s = slot[vals[r]]
        out_s[s] = starts[r]
        out_l[s] = lens[r]
        slot[vals[r]] = s + 1
    ptr = np.empty(n_labels + 1, np.int64)
    ptr[0] = 0
    for k in range(n_labels):
        ptr[k + 1] = slot[labels[k]]
    return labels, ptr, out_s, out_l


@njit(cache=True, nogil=True)
def _n_digits(x):
    d = 1
    while x >= 10:
        x //= 10
        d += 1
    return d


@njit(cache=True, nogil=True)
def _write_int(buf, pos, x):
    d = _n_digits(x)
    end = pos + d
    q = end - 1
    while d > 0:
        buf[q] = 48 + x % 10
        x //= 10
        q -= 1
        d -= 1
    return end


@njit(cache=True, nogil=True)
def runs_to_ascii(ptr, starts, lengths):
    """Write the Kaggle text of every group of runs into one ASCII buffer.

    ptr: (K+1,) group offsets into starts/lengths (0-based starts). Returns (buf, offs):
    group k's text is ``buf[offs[k]:offs[k+1]]`` = ``"s1 l1 s2 l2 ..."`` with 1-based starts.
    """
    k_groups = ptr.size - 1
    size = 0
    for r in range(starts.size):
        size += _n_digits(starts[r] + 1) + _n_digits(lengths[r]) + 2
    buf = np.empty(size, np.uint8)
    offs = np.empty(k_groups + 1, np.int64)
    pos = 0
    for k in range(k_groups):
        offs[k] = pos
        for r in range(ptr[k], ptr[k + 1]):
            if r > ptr[k]:
                buf[pos] = 32
                pos += 1
            pos = _write_int(buf, pos, starts[r] + 1)
            buf[pos] = 32
            pos += 1
            pos = _write_int(buf, pos, lengths[r])
    offs[k_groups] = pos
    return buf[:pos], offs


@njit(cache=True, nogil=True)
def parse_rle_bytes(text, n_pixels):
    """Parse newline-separated Kaggle RLE lines into 0-based runs, validating as it goes.

    text: (B,) uint8 ASCII, one RLE per line (an empty line is an empty mask).
    Returns (ptr, starts, lengths, err, err_line, err_token): runs of line k are
    ``starts[ptr[k]:ptr[k+1]]``. ``err`` is one of the ERR_* codes (0 when valid); then
    ``err_line``/``err_token`` locate the first problem (0-based line, 0-based token).
    """
    n_lines = 1
    for b in range(text.size):
        if text[b] == 10:
            n_lines += 1
    max_tokens = text.size // 2 + 2
    starts = np.empty(max_tokens // 2 + 1, np.int64)
    lengths = np.empty(max_tokens // 2 + 1, np.int64)
    ptr = np.zeros(n_lines + 1, np.int64)
    line = 0
    token = 0  # token index within the line
    n_runs = 0
    prev_end = -1  # end (exclusive) of the previous run of this line
    value = 0
    in_tok = False
    bad = False
    b = 0
    nb = text.size
    while b <= nb:
        c = 10 if b == nb else text[b]
        if c >= 48 and c <= 57:
            if not in_tok:
                in_tok = True
                value = 0
                bad = False
            if value < 1 << 40:
                value = value * 10 + (c - 48)
        elif c == 32 or c == 9 or c == 10 or c == 13:
            if in_tok:
                in_tok = False
                if bad:
                    return ptr, starts, lengths, ERR_NOT_INT, line, token
                if token % 2 == 0:
                    if value < 1:
                        return ptr, starts, lengths, ERR_START_LT_1, line, token
                    starts[n_runs] = value - 1
                else:
                    if value < 1:
                        return ptr, starts, lengths, ERR_LENGTH_LT_1, line, token
                    s = starts[n_runs]
                    if s + value > n_pixels:
                        return ptr, starts, lengths, ERR_PAST_END, line, token
                    if s < prev_end:
                        return ptr, starts, lengths, ERR_UNSORTED, line, token - 1
                    lengths[n_runs] = value
                    prev_end = s + value
                    n_runs += 1
                token += 1
            if c == 10:
                if token % 2 == 1:
                    return ptr, starts, lengths, ERR_ODD, line, token
                line += 1
                ptr[line] = n_runs
                token = 0
                prev_end = -1
        else:
            # Any other character makes the current token a non-integer.
            if not in_tok:
                in_tok = True
                value = 0
            bad = True
        b += 1
    return ptr, starts[:n_runs], lengths[:n_runs], 0, -1, -1


@njit(cache=True, nogil=True)
def paint_runs(out, ptr, starts, lengths, values):
    """Paint group k's runs into flat ``out`` with ``values[k]``, groups in order (later wins)."""
    for k in range(ptr.size - 1):
        v = values[k]
        for r in range(ptr[k], ptr[k + 1]):
            s = starts[r]
            for i in range(s, s + lengths[r]):
                out[i] = v


@njit(cache=True, nogil=True)
def paint_stack(out, ptr, starts, lengths):
    """Set ``out[k, run]`` True for every run of group k; out: (K, H*W) bool."""
    for k in range(ptr.size - 1):
        for r in range(ptr[k], ptr[k + 1]):
            s = starts[r]
            for i in range(s, s + lengths[r]):
                out[k, i] = True


@njit(cache=True, nogil=True)
def stack_runs(flat_stack):
    """Runs of every mask of a (K, H*W) bool stack. Returns (ptr, starts, lengths), 0-based."""
    k_masks, n = flat_stack.shape
    n_runs = 0
    for k in range(k_masks):
        prev = False
        for i in range(n):
            v = flat_stack[k, i]
            if v and not prev:
                n_runs += 1
            prev = v
    ptr = np.empty(k_masks + 1, np.int64)
    starts = np.empty(n_runs, np.int64)
    lengths = np.empty(n_runs, np.int64)
    r = 0
    for k in range(k_masks):
        ptr[k] = r
        i = 0
        while i < n:
            if flat_stack[k, i]:
                j = i + 1
                while j < n and flat_stack[k, j]:
                    j += 1
                starts[r] = i
                lengths[r] = j - i
                r += 1
                i = j
            else:
                i += 1
    ptr[k_masks] = r
    return ptr, starts, lengths


@njit(cache=True, nogil=True)
def first_overlap(ptr, starts, lengths, n_pixels):
    """First pixel covered by two groups of runs: (group_a, group_b, pixel) or (-1, -1, -1).

    group_a < group_b are 0-based group (mask) indices; pixel is the 0-based flat index.
    """
    owner = np.full(n_pixels, -1, np.int64)
    for k in range(ptr.size - 1):
        for r in range(ptr[k], ptr[k + 1]):
            for i in range(starts[r], starts[r] + lengths[r]):
                if owner[i] >= 0:
                    return owner[i], k, i
                owner[i] = k
    return -1, -1, -1
