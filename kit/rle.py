"""The one module that defines the kit's mask formats.

Kaggle / Sartorius RLE (``train.csv`` ``annotation``, ``submission.csv`` ``predicted``)
    A string ``"s1 l1 s2 l2 ..."`` of start/length pairs. Starts are **1-based** indices
    into the **ROW-MAJOR** flattened image (``i = row * width + col + 1``; the
    competition page said column-major, but row-major is what the scorer reads). Runs are
    sorted, do not overlap, have length >= 1 and stay inside ``H*W``. The empty string is
    an empty mask.

COCO RLE (LIVECell json, pycocotools)
    ``{"size": [H, W], "counts": ...}``, alternating background/foreground counts over the
    **COLUMN-MAJOR** flattened image. Converted here by :func:`coco_to_mask` /
    :func:`mask_to_coco` / :func:`coco_counts_to_kaggle`, never by hand elsewhere.

Label image
    ``(H, W)`` integer array, 0 = background, every other value one instance. Labels need
    not be sequential. Decoding gives int32 labels ``1..N`` in list order.

Instance stack
    ``(N, H, W)`` bool array, one mask per instance; masks may overlap (train.csv does).

Overlap rule of :func:`decode_labels`: masks are painted in list order, so where masks
overlap the pixel takes the label of the mask that comes **last** in the list.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kit import _rle_numba as _k
from kit.errors import KitError

__all__ = [
    "encode", "decode", "encode_labels", "decode_labels", "encode_stack", "decode_stack",
    "parse_runs", "check_label_image", "coco_to_mask", "mask_to_coco", "coco_counts_to_kaggle",
    "RLEError",
]


class RLEError(KitError):
    """A malformed RLE string. ``index`` is the position of the bad RLE in its list and
    ``detail`` the problem without that position (for callers that name the file line)."""

    def __init__(self, message: str, index: int = 0, detail: str | None = None):
        super().__init__(message)
        self.index = index
        self.detail = message if detail is None else detail


_ERROR_TEXT = {
    _k.ERR_NOT_INT: "token {tok!r} is not a non-negative integer",
    _k.ERR_ODD: "odd number of tokens ({n}): starts and lengths must come in pairs",
    _k.ERR_START_LT_1: "start {tok} < 1 (starts are 1-based)",
    _k.ERR_LENGTH_LT_1: "length {tok} < 1 (lengths must be positive)",
    _k.ERR_PAST_END: "run {start} {length} ends at pixel {end}, past the image end {n_pixels}",
    _k.ERR_UNSORTED: "run starting at {tok} starts before the previous run ends "
                     "(runs must be sorted and must not overlap)",
}


def _shape2d(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    return h, w


def _as_text(rle, index: int) -> str:
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return ""  # pandas reads an empty `predicted` cell as NaN
    if not isinstance(rle, str):
        detail = f"must be a string, got {type(rle).__name__}"
        raise RLEError(f"RLE #{index} {detail}", index, detail)
    if "\n" in rle:
        detail = "contains a line break (an RLE is one line of numbers)"
        raise RLEError(f"RLE #{index} {detail}", index, detail)
    return rle


def parse_runs(rles: Sequence[str], shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and validate RLE strings into 0-based runs.

    Returns ``(ptr, starts, lengths)``, all int64: runs of ``rles[k]`` are
    ``starts[ptr[k]:ptr[k+1]]`` (0-based row-major pixel index) and ``lengths`` alongside.
    Raises :class:`RLEError` (a ``ValueError``) naming the RLE's index, the token and the rule.
    """
    h, w = _shape2d(shape)
    if not len(rles):
        z = np.zeros(0, np.int64)
        return np.zeros(1, np.int64), z, z
    try:  # the common case, all strings without a newline, in one join
        text = "\n".join(rles)
    except TypeError:  # None / NaN cells (empty masks) or a wrong type: check one by one
        text = None
    if text is None or text.count("\n") != len(rles) - 1:
        text = "\n".join([_as_text(r, i) for i, r in enumerate(rles)])
    try:
        blob = text.encode("ascii")
    except UnicodeEncodeError:
        texts = text.split("\n")
        bad = next(i for i, t in enumerate(texts) if not t.isascii())
        char = next(c for c in texts[bad] if not c.isascii())
        detail = (f"non-ASCII character {char!r} (U+{ord(char):04X}) in {texts[bad][:40]!r}: RLE "
                  "numbers are written with the ASCII digits 0-9")
        raise RLEError(f"RLE #{bad} has a {detail}", bad, detail) from None
    ptr, starts, lengths, err, line, tok = _k.parse_rle_bytes(
        np.frombuffer(blob, np.uint8), h * w)
    if err:
        raise _error(err, int(line), int(tok), text.split("\n")[int(line)], h * w)
    return ptr, starts, lengths


def _error(err: int, line: int, tok: int, text: str, n_pixels: int) -> RLEError:
    tokens = text.split()
    info = {"n": len(tokens), "n_pixels": n_pixels, "tok": tokens[tok] if tok < len(tokens) else ""}
    if err == _k.ERR_PAST_END:
        start, length = int(tokens[tok - 1]), int(tokens[tok])
        info.update(start=start, length=length, end=start + length - 1)
    msg = _ERROR_TEXT[err].format(**info)
    return RLEError(f"RLE #{line}, token {tok}: {msg}", line, f"token {tok}: {msg}")


def check_label_image(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Check a label image's rank and dtype; return it C-contiguous (no copy if already).

    Negative labels are caught by the scans that read the pixels anyway (no extra pass here).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) label image, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must have an integer or bool dtype, got {labels.dtype}")
    return np.ascontiguousarray(labels)


def negative_labels_error(labels: np.ndarray, name: str) -> ValueError:
    return ValueError(f"{name} has negative labels (min {labels.min()}); labels must be >= 0")


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(compact int64 labels of the same shape, original value of each compact label).

    For label values too large for per-label tables; 0 stays background.
    """
    uniq, inverse = np.unique(labels, return_inverse=True)
    shift = 0 if uniq[0] == 0 else 1
    values = np.concatenate([np.zeros(1, uniq.dtype), uniq]) if shift else uniq
    return (inverse.reshape(labels.shape) + shift).astype(np.int64), values


def _label_runs(labels: np.ndarray, name: str = "labels"):
    """(labels_present, ptr, starts, lengths) of a checked label image, one vectorised scan.

    Runs of ``labels_present[k]`` are ``starts[ptr[k]:ptr[k+1]]`` (0-based, ascending).
    """
    flat = labels.reshape(-1)
    vals, starts, lengths, lo, hi = _k.scan_runs(flat)
    if lo < 0 and np.issubdtype(labels.dtype, np.signedinteger):
        raise negative_labels_error(labels, name)
    if lo < 0 or hi > 4 * flat.size + 1024:
        # Huge label values (or uint64 past int64): compact them so per-label tables stay small.
        compact, values = compact_labels(flat)
        vals, starts, lengths, _, hi = _k.scan_runs(compact)
        present, ptr, starts, lengths = _k.group_runs(vals, starts, lengths, hi)
        return values[present], ptr, starts, lengths
    return _k.group_runs(vals, starts, lengths, hi)


def _texts(ptr, starts, lengths) -> list[str]:
    buf, offs = _k.runs_to_ascii(ptr, starts, lengths)
    blob = buf.tobytes().decode("ascii")
    return [blob[offs[k]:offs[k + 1]] for k in range(len(offs) - 1)]


def encode_labels(labels: np.ndarray) -> list[str]:
    """One RLE per instance of an (H, W) label image, in ascending label order.

    One scan over the image encodes every instance (never one full-image scan per instance).
    Background is 0; labels need not be sequential; bool images give one RLE (or none).
    """
    _, ptr, starts, lengths = _label_runs(check_label_image(labels))
    return _texts(ptr, starts, lengths)


def encode(mask: np.ndarray) -> str:
    """RLE of one (H, W) mask (non-zero = foreground); ``""`` for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    out = encode_labels(mask != 0)
    return out[0] if out else ""


def encode_stack(stack: np.ndarray) -> list[str]:
    """One RLE per mask of an (N, H, W) stack (non-zero = foreground); masks may overlap."""
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3-D (N, H, W), got shape {stack.shape}")
    flat = np.ascontiguousarray(stack.reshape(stack.shape[0], -1) != 0)
    ptr, starts, lengths = _k.stack_runs(flat)
    return _texts(ptr, starts, lengths)


def decode(rle: str, shape) -> np.ndarray:
    """(H, W) bool mask of one RLE string; ``""`` (or NaN) is an empty mask."""
    h, w = _shape2d(shape)
    ptr, starts, lengths = parse_runs([rle], (h, w))
    out = np.zeros(h * w, np.bool_)
    _k.paint_runs(out, ptr, starts, lengths, np.ones(1, np.bool_))
    return out.reshape(h, w)


def decode_labels(rles: Sequence[str], shape) -> np.ndarray:
    """(H, W) int32 label image: ``rles[k]`` gets label ``k + 1``.

    Where masks overlap, the mask later in the list wins (painter's order); use
    :func:`decode_stack` to keep every overlapping pixel.
    """
    h, w = _shape2d(shape)
    ptr, starts, lengths = parse_runs(rles, (h, w))
    out = np.zeros(h * w, np.int32)
    _k.paint_runs(out, ptr, starts, lengths, np.arange(1, len(ptr), dtype=np.int32))
    return out.reshape(h, w)


def decode_stack(rles: Sequence[str], shape) -> np.ndarray:
    """(N, H, W) bool stack, one mask per RLE; overlapping masks stay intact."""
    h, w = _shape2d(shape)
    ptr, starts, lengths = parse_runs(rles, (h, w))
    out = np.zeros((len(ptr) - 1, h * w), np.bool_)
    _k.paint_stack(out, ptr, starts, lengths)
    return out.reshape(-1, h, w)


def coco_to_mask(segmentation, shape) -> np.ndarray:
    """(H, W) bool mask of a COCO segmentation: RLE dict (compressed or list counts) or polygons."""
    from pycocotools import mask as coco_mask

    h, w = _shape2d(shape)
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(s) for s in segmentation.get("size", (h, w))]
        if size != [h, w]:
            raise ValueError(f"COCO RLE size {size} does not match the image shape {[h, w]}")
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = coco_mask.frPyObjects(rle, h, w)
    else:
        raise ValueError(f"unknown COCO segmentation of type {type(segmentation).__name__}")
    return coco_mask.decode(rle).astype(bool)


def mask_to_coco(mask: np.ndarray) -> dict:
    """Compressed COCO RLE (column-major, counts as str) of one (H, W) mask."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def kaggle_to_coco(rles: Sequence[str], shape) -> list[tuple[dict, tuple[int, int, int, int]] | None]:
    """Per Kaggle RLE string of one image: ``(compressed COCO RLE (as :func:`mask_to_coco`
    gives it), box (x0, y0, x1, y1) exclusive)``, or None for an empty mask.

    Without decoding a mask at full size: the runs' pixels are re-ordered column-major and
    their runs handed to pycocotools as uncompressed counts, so the work is proportional to
    the foreground pixels, not to N * H * W. Raises :class:`RLEError` like :func:`parse_runs`.
    """
    from pycocotools import mask as coco_mask

    h, w = _shape2d(shape)
    ptr, starts, lengths = parse_runs(list(rles), (h, w))
    out = []
    for k in range(len(ptr) - 1):
        s, n = starts[ptr[k]:ptr[k + 1]], lengths[ptr[k]:ptr[k + 1]]
        if not n.sum():
            out.append(None)
            continue
        px = np.repeat(s - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))  # every run's pixels
        rows, cols = px // w, px % w
        col_major = np.unique(cols * h + rows)  # a pixel in two runs counts once
        breaks = np.flatnonzero(np.diff(col_major) != 1) + 1
        run_starts = col_major[np.r_[0, breaks]]
        run_ends = col_major[np.r_[breaks - 1, col_major.size - 1]] + 1
        gaps = run_starts - np.r_[0, run_ends[:-1]]
        counts = np.empty(2 * run_starts.size + 1, np.int64)
        counts[0:-1:2], counts[1::2], counts[-1] = gaps, run_ends - run_starts, h * w - run_ends[-1]
        if counts[-1] == 0:  # the mask holds the last pixel: no trailing background (pycocotools)
            counts = counts[:-1]
        coco = coco_mask.frPyObjects({"counts": counts.tolist(), "size": [h, w]}, h, w)
        coco["counts"] = coco["counts"].decode("ascii")
        out.append((coco, (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)))
    return out


def coco_counts_to_kaggle(rles: Sequence[dict], shape: tuple[int, int]) -> list[str]:
    """Kaggle RLE strings of compressed COCO RLEs (all of one image), without full-image decodes.

    Decodes pycocotools' counts strings (the algorithm of ``rleFrString`` in maskApi.c: 5 bits
    per character, sign bit 0x10, continuation bit 0x20, counts from the third on stored as
    deltas to the count two before), turns the column-major runs into pixel indices, re-sorts
    them row-major and rebuilds runs. Work is proportional to the foreground pixels, not to
    N * H * W (decoding 9796 full masks with pycocotools takes ~4 s, this ~0.3 s). Verified
    against :func:`coco_to_mask` + :func:`encode` in the tests.
    Raises :class:`RLEError` with ``.index`` = the position of the bad RLE.
    """
    h, w = shape
    n_px = h * w
    n = len(rles)
    blobs = []
    for i, r in enumerate(rles):
        size = [int(s) for s in r.get("size", (h, w))]
        if size != [h, w]:
            raise RLEError(f"RLE size {size} does not match the image (height, width) = {[h, w]}", i)
        counts = r["counts"]
        if isinstance(counts, str):
            try:
                counts = counts.encode("ascii")
            except UnicodeEncodeError:
                raise RLEError("compressed counts hold non-ASCII characters", i) from None
        if not isinstance(counts, bytes) or not counts:
            raise RLEError(f"compressed counts must be a non-empty string, got {counts!r:.40}", i)
        blobs.append(counts)
    if n == 0:
        return []
    n_chars = np.fromiter((len(b) for b in blobs), np.int64, n)
    str_end = np.cumsum(n_chars) - 1  # index of each string's last character
    c = np.frombuffer(b"".join(blobs), np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c > 63))
    if bad.size:
        i = int(np.searchsorted(str_end, bad[0]))
        raise RLEError(f"character {chr(c[bad[0]] + 48)!r} is not a pycocotools counts character", i)
    more = (c & 0x20) != 0
    if more[str_end].any():
        i = int(np.flatnonzero(more[str_end])[0])
        raise RLEError("compressed counts end in the middle of a number", i)
    tok_end = np.flatnonzero(~more)
    tok_start = np.r_[0, tok_end[:-1] + 1]
    tok_len = tok_end - tok_start + 1
    tok_str = np.searchsorted(str_end, tok_end)  # string (annotation) of each token
    if (tok_len > 7).any():  # 7 chars = 35 bits: more than any image needs
        raise RLEError("compressed counts hold a number of more than 7 characters",
                         int(tok_str[np.argmax(tok_len > 7)]))
    shift = 5 * (np.arange(c.size) - np.repeat(tok_start, tok_len))
    x = np.add.reduceat((c & 0x1F) << shift, tok_start)
    neg = (c[tok_end] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * tok_len[neg])
    # Undo the delta coding: cnts[m] = x[m] + cnts[m-2] for m > 2 (m = index within a string),
    # i.e. running sums along the chains m = 1, 3, 5, ... and m = 2, 4, 6, ... (m = 0 alone).
    n_tok = np.bincount(tok_str, minlength=n)
    first_tok = np.cumsum(n_tok) - n_tok
    m = np.arange(x.size) - np.repeat(first_tok, n_tok)
    chain = tok_str * 3 + np.where(m == 0, 0, 1 + (m & 1))
    order = np.argsort(chain, kind="stable")
    xs = x[order]
    cs = np.cumsum(xs)
    key = chain[order]
    new = np.r_[True, key[1:] != key[:-1]]
    cnts = np.empty_like(x)
    cnts[order] = cs - (cs - xs)[new][np.cumsum(new) - 1]
    if (cnts < 0).any():
        raise RLEError("compressed counts decode to a negative run length",
                         int(tok_str[np.argmax(cnts < 0)]))
    total = np.add.reduceat(cnts, first_tok)
    if (total != n_px).any():
        i = int(np.flatnonzero(total != n_px)[0])
        raise RLEError(f"counts sum to {int(total[i])} pixels, the image has {h} * {w} = {n_px}", i)
    # Foreground runs (odd m), column-major 0-based starts.
    cum = np.cumsum(cnts)
    start = cum - cnts - np.repeat((cum - cnts)[first_tok], n_tok)
    fg = ((m & 1) == 1) & (cnts > 0)
    run_start, run_len, run_ann = start[fg], cnts[fg], tok_str[fg]
    n_fg = int(run_len.sum())
    if n_fg == 0:
        return [""] * n
    p = np.repeat(run_start - (np.cumsum(run_len) - run_len), run_len) + np.arange(n_fg)
    pix = np.repeat(run_ann, run_len) * n_px + (p % h) * w + p // h  # annotation, row-major index
    pix.sort()
    ann = pix // n_px
    brk = np.r_[True, (np.diff(pix) != 1) | (ann[1:] != ann[:-1])]
    first = np.flatnonzero(brk)
    lengths = np.diff(np.r_[first, n_fg])
    pairs = np.empty(2 * first.size, np.int64)
    pairs[0::2] = pix[first] % n_px + 1
    pairs[1::2] = lengths
    tokens = list(map(str, pairs.tolist()))
    runs_per_ann = np.bincount(ann[first], minlength=n)
    out, k = [], 0
    for r in runs_per_ann.tolist():
        out.append(" ".join(tokens[2 * k:2 * (k + r)]))
        k += r
    return out
