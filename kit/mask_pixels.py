"""Masks as pixel lists: the foreground of every mask of one image, and per-mask crops.

Work and memory are proportional to the foreground, never N * H * W (images hold hundreds of
masks). Used by the EDA (:mod:`kit.eda`) and the outline figures (:mod:`kit.overlay`).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from kit import rle as _rle

__all__ = ["mask_pixels", "mask_crops"]


def mask_pixels(rles: Sequence[str], shape) -> tuple[np.ndarray, np.ndarray]:
    """Foreground pixels of every mask of one image: ``(ann, pix)``, int64 arrays of one length.

    ``pix`` = 0-based row-major pixel indices, ascending within each mask; ``ann`` = the 0-based
    position in ``rles`` of the pixel's mask (non-decreasing). Overlapping masks each keep their
    pixels. Work and memory are proportional to the foreground, never N * H * W.
    Raises :class:`kit.rle.RLEError` for a malformed RLE.
    """
    ptr, starts, lengths = _rle.parse_runs(list(rles), shape)
    run_ann = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    pix = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
    return np.repeat(run_ann, lengths), pix


def mask_crops(ann: np.ndarray, pix: np.ndarray, n_masks: int,
               width: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """``(k, y0, x0, crop)`` for every non-empty mask ``k`` of :func:`mask_pixels` output.

    ``crop`` is the (h, w) bool mask inside its bounding box, whose top-left pixel is
    (row ``y0``, column ``x0``) of the image of width ``width``.
    """
    areas = np.bincount(ann, minlength=n_masks)
    ks = np.flatnonzero(areas)
    if ks.size == 0:
        return
    first = (np.cumsum(areas) - areas)[ks]
    rows, cols = pix // width, pix % width
    y0s, y1s = rows[first], rows[first + areas[ks] - 1]  # row-major order: first/last row
    x0s, x1s = np.minimum.reduceat(cols, first), np.maximum.reduceat(cols, first)
    for k, o, y0, y1, x0, x1 in zip(ks.tolist(), first.tolist(), y0s.tolist(), y1s.tolist(),
                                    x0s.tolist(), x1s.tolist()):
        crop = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
        crop[rows[o:o + areas[k]] - y0, cols[o:o + areas[k]] - x0] = True
        yield k, y0, x0, crop
