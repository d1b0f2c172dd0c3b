"""The one place model families are registered: name -> where its :class:`ModelFamily` lives.

A family module is imported only when the family is first used (``import kit`` stays light
and needs neither torch nor cellpose). Adding a family = one folder under ``kit/models/`` (or
anywhere importable) defining ``FAMILY = MyFamily()``, plus one line in :data:`FAMILIES`; code
outside the package can call :func:`register` instead.
"""
from __future__ import annotations

import importlib

from kit.errors import ModelError
from kit.models.family import ModelFamily

__all__ = ["FAMILIES", "family", "names", "register", "unregister"]

# model.json "type" -> "module:attribute" of the family object
FAMILIES: dict[str, str] = {
    "baseline": "kit.models.baseline.family:FAMILY",
    "cellpose": "kit.models.cellpose.family:FAMILY",
    "maskrcnn": "kit.models.maskrcnn.family:FAMILY",
    "detectron2": "kit.models.d2.family:FAMILY",
    "ensemble": "kit.models.ensemble.family:FAMILY",
}
_LOADED: dict[str, ModelFamily] = {}


def family(name: str) -> ModelFamily:
    """The registered family ``name``; :class:`ModelError` listing the known ones otherwise."""
    if name not in _LOADED:
        where = FAMILIES.get(name) if isinstance(name, str) else None
        if where is None:
            raise ModelError(f"unknown model type {name!r}; known types: {names()}")
        module, attr = where.split(":")
        fam = getattr(importlib.import_module(module), attr)
        if not isinstance(fam, ModelFamily) or fam.name != name:
            raise ModelError(f"{where} is not the ModelFamily {name!r}")
        _LOADED[name] = fam
    return _LOADED[name]


def names(trainable: bool | None = None) -> list[str]:
    """The registered family names, sorted; with ``trainable``, only those (not) trainable."""
    if trainable is None:
        return sorted(FAMILIES)
    return sorted(n for n in FAMILIES if family(n).trainable == trainable)


def register(fam: ModelFamily, where: str | None = None) -> ModelFamily:
    """Register a family object (``where``: its "module:attribute", for the record); replaces
    an earlier family of the same name. Returns ``fam``."""
    if not isinstance(fam, ModelFamily) or not fam.name:
        raise TypeError(f"register() takes a ModelFamily with a name, got {fam!r}")
    FAMILIES[fam.name] = where or f"{type(fam).__module__}:<registered object>"
    _LOADED[fam.name] = fam
    return fam


def unregister(name: str) -> None:
    """Remove a family registered with :func:`register` (tests)."""
    FAMILIES.pop(name, None)
    _LOADED.pop(name, None)
