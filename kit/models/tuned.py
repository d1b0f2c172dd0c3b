"""Tuned post-processing files (``tuned.yaml``, written by ``python -m kit.tune search``): read,
check and apply them to a loaded model, through the model's family.

A tuned YAML is ``{"model_type": TYPE, <the family's tuned_keys>...}``; what the sections mean
is the family's business (:meth:`kit.models.family.ModelFamily.apply_tuned`).
"""
from __future__ import annotations

__all__ = ["TUNED_FILE", "read_tuned", "apply_tuned"]

TUNED_FILE = "tuned.yaml"


def read_tuned(path) -> dict:
    """The checked mapping of a tuned YAML: a known ``model_type`` and only its family's keys."""
    from kit.config import ConfigError, load_yaml
    from kit.models import registry

    doc = load_yaml(path)
    kind = doc.get("model_type")
    if kind not in registry.FAMILIES:
        raise ConfigError(f"{path}: model_type must be one of {registry.names()}, got {kind!r}")
    valid = ("model_type",) + tuple(registry.family(kind).tuned_keys)
    unknown = [k for k in doc if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} for model_type {kind}; valid keys are "
                          f"{list(valid)}")
    return doc


def apply_tuned(model, tuned, kind: str | None = None):
    """Apply a tuned YAML (path or :func:`read_tuned` mapping) to a loaded model, in place, and
    return the model. ``kind``: the model folder's type (default: ``model.TYPE``); it must
    equal the file's ``model_type``."""
    from kit.models import registry

    where = str(tuned) if not isinstance(tuned, dict) else "tuned"
    doc = read_tuned(tuned) if not isinstance(tuned, dict) else tuned
    kind = kind or getattr(model, "TYPE", None)
    if doc.get("model_type") != kind:
        raise ValueError(f"{where}: tuned for a {doc.get('model_type')!r} model, not {kind!r}")
    registry.family(kind).apply_tuned(model, doc, where)
    return model
