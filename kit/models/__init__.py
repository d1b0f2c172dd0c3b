"""Models: the classical baseline and trained models. A model is one folder.

Every model folder holds ``model.json`` with at least ``{"type": NAME}``; :func:`load_model`
reads the type and hands the folder to that model's ``load``. A loaded model has
``predict(image: (H, W) uint8, cell_type: str) -> (H, W) int32 label image`` (0 = background,
non-overlapping). A folder may also hold ``celltype.joblib`` (:mod:`kit.celltype`), used when
an image's cell type is not given.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

# type name -> "module:class"; the class has classmethod load(folder).
MODEL_TYPES = {
    "baseline": "kit.models.baseline:BaselineModel",
}


def model_type(folder) -> str:
    """The ``type`` of the model folder, with clear errors for a missing/unknown one."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no model.json)")
    try:
        kind = json.loads(path.read_text()).get("type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None
    if kind not in MODEL_TYPES:
        raise ValueError(f"{path}: unknown model type {kind!r}; known types: {sorted(MODEL_TYPES)}")
    return kind


def load_model(folder):
    """Load the model stored in ``folder`` (see module docstring)."""
    module, cls = MODEL_TYPES[model_type(folder)].split(":")
    return getattr(importlib.import_module(module), cls).load(folder)
