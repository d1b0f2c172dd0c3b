"""LIVECell's classes for the detection families' LIVECell stage (Mask R-CNN, detectron2).

A LIVECell image's file name starts with its cell line (``A172_Phase_...``; LIVECell's 8 lines,
:data:`kit.synth_livecell.CELL_LINES`). Mode ``cell_line``: one class per cell line present,
sorted by name; mode ``single``: one class ``cell``. The Sartorius stage that follows has other
classes, so its box and mask predictors start fresh; the rest of the network carries over.
"""
from __future__ import annotations

__all__ = ["livecell_classes"]


def livecell_classes(records, mode: str) -> tuple[list[str], dict[str, int]]:
    """``(class names, {record id: 1-based label})`` of LIVECell ``records`` for ``mode``
    (``cell_line`` or ``single``; module doc)."""
    if mode == "single":
        return ["cell"], {r.id: 1 for r in records}
    if mode != "cell_line":
        raise ValueError(f"LIVECell labels must be 'cell_line' or 'single', got {mode!r}")
    names = sorted({r.id.split("_")[0] for r in records})
    return names, {r.id: names.index(r.id.split("_")[0]) + 1 for r in records}
