"""Overlapping RLE-list inputs for :mod:`benchmarks.bench`: real ground truth and a perturbed copy.

Real ground truth reaches the scorer as lists of Kaggle RLE strings whose masks overlap a
little (and sometimes repeat). The bench times that path on real GT when a train.csv-format
file is given (``../shared/data/sartorius/train.csv`` by default, when present), with a
perturbed copy of it as the prediction; otherwise on synthetic label images turned into
overlapping lists (a few masks repeated, neighbours grown into each other by the shifts).

:func:`perturb_rles` works on runs, not pixels: per mask it drops it (``P_DROP``), shifts it
by up to ``MAX_SHIFT`` pixels in each direction (runs clipped to their row and the image),
trims one pixel off the end of every run (``P_ERODE``, runs of length 1 kept), and writes it
twice (``P_REPEAT``). A mask with a run that crosses a row end is only dropped or repeated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kit import rle

P_DROP = 0.08
P_ERODE = 0.5
P_REPEAT = 0.03
MAX_SHIFT = 2
DEFAULT_REAL_GT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sartorius" / "train.csv"


def _shifted(starts: np.ndarray, lengths: np.ndarray, shape, dy: int, dx: int, erode: bool):
    """(starts, lengths) of one mask's runs moved by (dy, dx), clipped, optionally eroded."""
    h, w = shape
    row, col = starts // w + dy, starts % w + dx
    end = np.minimum(col + lengths - (erode & (lengths > 1)), w)
    col = np.maximum(col, 0)
    keep = (row >= 0) & (row < h) & (end > col)
    return (row * w + col)[keep], (end - col)[keep]


def perturb_rles(rles: list[str], shape, rng: np.random.Generator) -> list[str]:
    """A plausible prediction of the masks ``rles`` (Kaggle RLE, one image of ``shape``)."""
    ptr, starts, lengths = rle.parse_runs(rles, shape)
    w = shape[1]
    out_ptr, out_starts, out_lengths = [0], [], []
    for k in range(len(ptr) - 1):
        s, n = starts[ptr[k]:ptr[k + 1]], lengths[ptr[k]:ptr[k + 1]]
        if rng.random() < P_DROP or s.size == 0:
            continue
        if np.all(s % w + n <= w):
            dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2)
            s, n = _shifted(s, n, shape, int(dy), int(dx), bool(rng.random() < P_ERODE))
        for _ in range(2 if rng.random() < P_REPEAT else 1):
            if s.size:
                out_starts.append(s)
                out_lengths.append(n)
                out_ptr.append(out_ptr[-1] + s.size)
    if not out_starts:
        return []
    return rle._texts(np.asarray(out_ptr, np.int64), np.concatenate(out_starts),
                      np.concatenate(out_lengths))


def real_pairs(train_csv: Path, seed: int) -> list[tuple[str, str, tuple, list, list]]:
    """(id, cell_type, shape, gt RLEs, perturbed RLEs) of every image of a train.csv file."""
    from kit.data import read_train_csv

    rng = np.random.default_rng(seed)
    return [(r.id, r.cell_type, r.shape, list(r.rles), perturb_rles(list(r.rles), r.shape, rng))
            for r in read_train_csv(train_csv, check_images=False)]


def synthetic_pairs(data, seed: int) -> list[tuple[str, str, tuple, list, list]]:
    """The same from synthetic (cell type, gt, pred) label images: the GT list repeats a few
    masks (as real GT does), the prediction is a perturbed copy of it."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (cell_type, gt, _) in enumerate(data):
        rles = rle.encode_labels(gt)
        rles += [rles[j] for j in np.flatnonzero(rng.random(len(rles)) < P_REPEAT)]
        out.append((f"synthetic-{i}", cell_type, gt.shape, rles,
                    perturb_rles(rles, gt.shape, rng)))
    return out


def interleaved(pairs: list) -> list:
    """``pairs`` reordered so that every prefix keeps the cell-type mix of the whole (the
    prefixes that slow peers are timed on): item j of a type with n items sits at (j + 0.5) / n."""
    n_of, seen, key = {}, {}, []
    for p in pairs:
        n_of[p[1]] = n_of.get(p[1], 0) + 1
    for p in pairs:
        j = seen[p[1]] = seen.get(p[1], -1) + 1
        key.append((j + 0.5) / n_of[p[1]])
    return [pairs[i] for i in np.argsort(key, kind="stable")]


def write_csvs(pairs, gt_path: Path, pred_path: Path) -> None:
    """The GT lists of ``pairs`` as a train.csv-format file (metadata columns left out, as
    empty as in the real shared file) and the perturbed lists as an ``id,predicted`` CSV."""
    import csv

    from kit.atomic import atomic_open

    with atomic_open(gt_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "annotation", "width", "height", "cell_type"])
        for id_, cell_type, (h, w), gt, _ in pairs:
            out.writerows([id_, text, w, h, cell_type] for text in gt or [""])
    with atomic_open(pred_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "predicted"])
        for id_, _, _, _, pred in pairs:
            out.writerows([id_, text] for text in pred or [""])
