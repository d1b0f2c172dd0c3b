"""Models: the classical baseline and trained models. A model is one folder.

Every model folder holds ``model.json`` with at least ``{"type": NAME}``; :func:`load_model`
reads the type and hands the folder to that model's ``load``. A loaded model has
``predict(image: (H, W) uint8, cell_type: str) -> (H, W) int32 label image`` (0 = background,
non-overlapping). A folder may also hold ``celltype.joblib`` (:mod:`kit.celltype`), used when
an image's cell type is not given, and ``tuned.yaml`` (written by ``python -m kit.tune search``):
post-processing parameters that :func:`load_model` applies on top of the folder's own.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

# type name -> "module:class"; the class has classmethod load(folder).
MODEL_TYPES = {
    "baseline": "kit.models.baseline:BaselineModel",
    "maskrcnn": "kit.models.maskrcnn:MaskRCNNModel",
    "cellpose": "kit.models.cellpose:CellposeSegmenter",
    "ensemble": "kit.ensemble:EnsembleModel",
}
TUNED_FILE = "tuned.yaml"


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


def read_model_json(folder, expected_type: str) -> tuple[Path, dict]:
    """(path, document) of ``folder/model.json``, checked to hold a model of ``expected_type``."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model.json in {str(folder)!r}")
    doc = json.loads(path.read_text())
    if doc.get("type") != expected_type:
        raise ValueError(f"{path} holds a model of type {doc.get('type')!r}, expected {expected_type!r}")
    return path, doc


def check_image(image):
    """The (H, W) uint8 grayscale image every model takes; ValueError naming what is wrong."""
    import numpy as np

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D (H, W) grayscale array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    return image


def load_model(folder, tuned: bool = True):
    """Load the model stored in ``folder`` (see module docstring); with ``tuned``, apply
    ``folder/tuned.yaml`` when it exists (:func:`kit.tune.apply_tuned`)."""
    kind = model_type(folder)
    module, cls = MODEL_TYPES[kind].split(":")
    model = getattr(importlib.import_module(module), cls).load(folder)
    if tuned and (Path(folder) / TUNED_FILE).is_file():
        from kit.tune import apply_tuned

        apply_tuned(model, Path(folder) / TUNED_FILE, kind)
    return model
