"""kit.config: strict YAML -> dataclass trees with errors that name the file, the key and the valid keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from kit import CELL_TYPES, config
from kit.config import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    size: float | Literal["auto"] = "auto"
    limit: int | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    pair: tuple[float, float] = (0.0, 1.0)
    sizes: tuple[int, ...] = ()
    inner: Inner = field(default_factory=Inner)
    per: dict[str, Inner] = field(default_factory=dict)


def test_defaults_conversion_and_round_trip():
    cfg = config.from_dict(Outer, {"pair": [1, 2], "sizes": [16, 32], "inner": {"rate": 2, "size": 17},
                                   "per": {"k": {"limit": 4}}})
    assert cfg.pair == (1.0, 2.0) and isinstance(cfg.pair[0], float)
    assert cfg.sizes == (16, 32) and cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.size == 17.0 and cfg.per["k"].limit == 4 and cfg.per["k"].size == "auto"
    assert config.from_dict(Outer, config.to_dict(cfg)) == cfg
    assert config.from_dict(Outer, {}) == Outer()


@pytest.mark.parametrize("data, message", [
    ({"inner": {"rte": 1.0}}, "inner: unknown key(s) ['rte']; valid keys are ['rate', 'steps', 'mode', 'size', 'limit']"),
    ({"nme": "y"}, "unknown key(s) ['nme']; valid keys are ['name', 'flag'"),
    ({"inner": {"steps": "3"}}, "inner.steps: expected an integer, got '3'"),
    ({"inner": {"steps": True}}, "inner.steps: expected an integer, got True"),
    ({"flag": 1}, "flag: expected true or false, got 1"),
    ({"inner": {"rate": "1e-5"}}, "write 1.0e-5"),
    ({"inner": {"mode": "c"}}, "inner.mode: must be one of ['a', 'b'], got 'c'"),
    ({"inner": {"size": "big"}}, "inner.size: 'big' matches none of"),
    ({"pair": [1.0]}, "pair: expected a list of 2 values, got [1.0]"),
    ({"sizes": [1, "x"]}, "sizes[1]: expected an integer, got 'x'"),
    ({"inner": {"steps": 0}}, "inner: steps must be >= 1, got 0"),
    ({"inner": None}, "inner: must not be null"),
    ({"per": {"k": {"bad": 1}}}, "per.k: unknown key(s) ['bad']"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        config.from_dict(Outer, data, "f.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("f.yaml")


def test_load_yaml_strict(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\ninner:\n  rate: 1.0e-5\n  steps: 2\n")
    assert config.load(Outer, p).inner == Inner(rate=1e-5, steps=2)
    p.write_text("name: a\nname: b\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 2: duplicate key 'name' \(first on line 1\)"):
        config.load_yaml(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load_yaml(p)
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_yaml(p)
    p.write_text("")
    assert config.load_yaml(p) == {}
    with pytest.raises(ConfigError, match="config file not found"):
        config.load_yaml(tmp_path / "missing.yaml")


def test_no_config_key_hides_in_a_comment():
    """A key pasted onto the end of a comment line is silently a comment (the file still loads,
    with that key's default): no comment in ``kit/configs`` holds ``<known key>: <value>`` after
    a run of spaces, as a key line would."""
    import re
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[1] / "kit" / "configs"

    def keys(node) -> set:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    known = {k for path in folder.glob("*.yaml") for k in keys(yaml.safe_load(path.read_text()))}
    known -= set(CELL_TYPES)   # per-type sections and maps are named in prose
    pattern = re.compile(r"\s{2,}(" + "|".join(sorted(map(re.escape, map(str, known)))) + r"):\s+\S")
    found = []
    for path in sorted(folder.glob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("#")[2]
            if pattern.search(comment):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert known and not found, "\n".join(found)
