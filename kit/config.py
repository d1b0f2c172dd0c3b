"""Strict YAML configs: known keys only, checked types, errors that name the file and the key.

A config is a tree of frozen dataclasses. :func:`load_yaml` reads a YAML file (safe loader;
a duplicate key is an error, not a silent overwrite); :func:`from_dict` builds the dataclass
tree from the parsed mapping; :func:`to_dict` turns it back into plain data (for JSON).

Rules of :func:`from_dict`
    * an unknown key is an error that lists the valid keys (like csbdeep's ``BaseConfig``);
    * a missing key takes the dataclass field's default; a field without default is required;
    * values are checked against the field's annotation: ``bool`` (YAML ``true``/``false``
      only), ``int`` (not bool), ``float`` (an int is accepted and converted), ``str``,
      ``Literal[...]``, ``X | None``, ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``list[X]``
      (from a YAML list), ``dict[str, X]`` and nested dataclasses;
    * the dataclass's own ``__post_init__`` checks ranges; its ``ValueError`` is re-raised
      with the location prefixed.

Errors are :class:`ConfigError` (a ``ValueError``) of the form
``path/to/file.yaml: train.epochs: expected an integer, got 'ten'``.

Note: PyYAML follows YAML 1.1, where ``1e-5`` is a *string*; write ``1.0e-5``. The error for
such a value says so.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from kit.errors import KitError

__all__ = ["ConfigError", "load_yaml", "from_dict", "to_dict", "load"]


class ConfigError(KitError):
    """A bad config: names the file, the dotted key and the bad value."""


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first on line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def load_yaml(path) -> dict:
    """The top-level mapping of a YAML file; ConfigError for a missing file, bad YAML,
    duplicate keys or a top level that is not a mapping (an empty file gives ``{}``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                          f"{type(data).__name__}")
    return data


_KEY = ", key "


def _join(where: str, key) -> str:
    """Where a value is: ``x.yaml, key train.lr`` (the file, then the dotted key path)."""
    if not where:
        return f"key {key}"
    if where.startswith("key ") or _KEY in where:
        return f"{where}.{key}"
    return f"{where}{_KEY}{key}"


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}" if where else msg)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(tp, value, where: str):
    """``value`` checked (and, for float/tuple, converted) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _fail(where, "must not be null")
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        for a in inner:
            try:
                return _convert(a, value, where)
            except ConfigError:
                pass
        raise _fail(where, f"{_show(value)} matches none of {[getattr(a, '__name__', str(a)) for a in inner]}")
    if value is None:
        raise _fail(where, "must not be null")
    if origin is Literal:
        if value not in args:
            raise _fail(where, f"must be one of {list(args)}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, f"expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (YAML 1.1 reads a number like 1e-5 as text: write 1.0e-5)"
                except ValueError:
                    pass
            raise _fail(where, f"expected a number, got {_show(value)}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, f"expected a string, got {_show(value)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, f"expected a list, got {_show(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _fail(where, f"expected a list of {len(args)} values, got {_show(value)}")
            items = [_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected a mapping, got {_show(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(key_tp, k, where): _convert(val_tp, v, _join(where, k))
                for k, v in value.items()}
    raise TypeError(f"{where}: unsupported annotation {tp!r} in a config dataclass")


def from_dict(cls, data, where: str = ""):
    """Instance of the dataclass ``cls`` built from the mapping ``data`` (rules: module doc).

    ``where`` prefixes error messages (e.g. the file name).
    """
    if not isinstance(data, dict):
        raise _fail(where, f"expected a mapping of keys, got {_show(data)}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    valid = [f.name for f in fields]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; valid keys are {valid}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields:
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], _join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(where, f"missing required key {f.name!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise _fail(where, str(e)) from None


def to_dict(obj) -> dict:
    """Plain data (dicts, lists, numbers, strings) of a config dataclass tree, for JSON/YAML."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def load(cls, path):
    """``from_dict(cls, load_yaml(path), where=str(path))``."""
    return from_dict(cls, load_yaml(path), str(path))
