"""What every trainer of a detection family records while it trains: the validation MAP of a
model on an inner split (:func:`evaluate`) and CSV logs appended a row at a time
(:class:`CsvLog`)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["evaluate", "CsvLog"]


def evaluate(model, records: Sequence) -> dict:
    """MAP of ``model`` (``predict(image, cell_type) -> labels``) on ``records`` with their
    true cell types (``cell_type: vote`` models ignore them), by :mod:`kit.metric` (the C
    heap trimmed first and after every image, :mod:`kit.heap`): an image
    without predictions scores 0, never NaN. Returns ``{"map", "by_cell_type", "n_images",
    "n_pred"}`` (``map`` 0.0 for no records)."""
    from kit import metric
    from kit.heap import release_free_memory

    release_free_memory()  # the training steps' freed heap, before validation's own peak
    scores, n_pred = [], 0
    for rec in records:
        labels = model.predict(rec.load_image(), rec.cell_type)
        release_free_memory()  # images of other sizes and detection counts leave other holes
        n_pred += int(len(np.unique(labels)) - (labels.min() == 0 if labels.size else 0))
        scores.append(metric.image_score(list(rec.rles), labels, rec.shape, id=rec.id,
                                         cell_type=rec.cell_type))
    if not scores:
        return {"map": 0.0, "by_cell_type": {}, "n_images": 0, "n_pred": n_pred}
    summary = metric.summarize(scores)
    by = {k: float(v.map) for k, v in summary.by_cell_type.items()}
    return {"map": float(summary.map), "by_cell_type": by,
            "n_images": len(scores), "n_pred": n_pred}


class CsvLog:
    """A CSV file with fixed ``columns``, header written when the file is new; calling it
    appends one row (missing columns empty, floats with 6 significant digits)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path, self.columns = Path(path), list(columns)
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def __call__(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v
