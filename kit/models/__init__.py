"""Models: the classical baseline, trained models and ensembles. A model is one folder.

Every model folder holds ``model.json`` with at least ``{"type": NAME}``, NAME being a model
family registered in :mod:`kit.models.registry` (the protocol: :mod:`kit.models.family`);
:func:`load_model` reads the type and hands the folder to that family's ``load``. A loaded
model has
``predict(image: (H, W) uint8, cell_type: str) -> (H, W) int32 label image`` (0 = background,
non-overlapping). A folder may also hold ``celltype.joblib`` (:mod:`kit.celltype`), used when
an image's cell type is not given, and ``tuned.yaml`` (written by ``python -m kit.tune search``):
post-processing parameters that :func:`load_model` applies on top of the folder's own.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from kit.errors import KitError, ModelError, one_line

from kit.models.tuned import TUNED_FILE


@contextmanager
def model_file(path, what: str = "model file"):
    """Guard the loading of one file of a model: whatever goes wrong inside (a missing,
    truncated or foreign file, a key or shape that does not fit) leaves as ONE
    :class:`ModelError` naming the file, never as a traceback from pickle, torch or joblib.
    The kit's own errors and FileNotFoundError (they name their file already) pass as they are."""
    try:
        yield
    except (KitError, FileNotFoundError):  # already say which file and what is wrong
        raise
    except Exception as e:  # noqa: BLE001 - any failure to load the file is the file's fault
        raise ModelError(f"{path}: cannot load this {what} ({type(e).__name__}: "
                         f"{one_line(e)[:300]})") from None


def read_json_object(path, what: str = "JSON file") -> dict:
    """The JSON object in ``path``; :class:`ModelError` naming the file when it is missing,
    truncated or not an object."""
    with model_file(path, what):
        doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def model_type(folder) -> str:
    """The ``type`` of the model folder, with clear errors for a missing/unknown one."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no model.json)")
    from kit.models import registry

    kind = read_json_object(path, "model.json").get("type")
    if not isinstance(kind, str) or kind not in registry.FAMILIES:
        raise ModelError(f"{path}: unknown model type {kind!r}; known types: {registry.names()}")
    return kind


def read_model_json(folder, expected_type: str) -> tuple[Path, dict]:
    """(path, document) of ``folder/model.json``, checked to hold a model of ``expected_type``."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model.json in {str(folder)!r}")
    doc = read_json_object(path, "model.json")
    if doc.get("type") != expected_type:
        raise ModelError(f"{path} holds a model of type {doc.get('type')!r}, expected "
                         f"{expected_type!r}")
    return path, doc


def torch_device(name: str = "auto"):
    """The ``torch.device`` of a config's ``device``: ``auto`` (CUDA when torch sees it, else
    CPU), ``cpu`` or ``cuda`` (a ValueError when torch sees no CUDA device)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


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
    ``folder/tuned.yaml`` when it exists (:func:`kit.models.tuned.apply_tuned`)."""
    from kit.models import registry
    from kit.models.tuned import apply_tuned

    kind = model_type(folder)
    fam = registry.family(kind)
    with model_file(Path(folder) / "model.json", f"{kind} model folder"):
        model = fam.load(Path(folder))
    if tuned and (Path(folder) / TUNED_FILE).is_file():
        apply_tuned(model, Path(folder) / TUNED_FILE, kind)
    return model
