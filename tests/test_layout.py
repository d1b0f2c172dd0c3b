"""The package's shape: no import cycles among kit's modules (imports inside functions count),
the library never imports a command-line module, and model families are reached through the
registry only."""
from __future__ import annotations

import ast
from pathlib import Path

KIT = Path(__file__).resolve().parents[1] / "kit"


def modules() -> dict[str, Path]:
    out = {}
    for p in KIT.rglob("*.py"):
        parts = list(p.relative_to(KIT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the kit modules it imports anywhere in its file (a package's ``__init__`` is
    its own node; importing ``a.b`` where ``b`` is a name counts as importing ``a``)."""
    mods = modules()

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                r = resolve(t)
                if r and r != m and r.startswith("kit"):
                    edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def cli_modules() -> set[str]:
    return {m for m, p in modules().items() if 'if __name__ == "__main__":' in p.read_text()}


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_a_command_line_module():
    clis = cli_modules()
    assert {"kit.train", "kit.tune", "kit.predict", "kit.cv"} <= clis
    bad = {m: sorted(deps & clis) for m, deps in import_graph().items()
           if m not in clis and deps & clis}
    assert bad == {}


def test_families_are_reached_through_the_registry_only():
    """Outside kit/models, no module imports a family's package: kit.train, kit.tune, kit.predict
    and the ensemble work through kit.models.registry and the protocol."""
    families = ("kit.models.baseline", "kit.models.cellpose", "kit.models.maskrcnn",
                "kit.models.ensemble")
    allowed = {"kit.ensemble", "kit.import_detectron2"}   # a family's own command lines
    bad = {}
    for m, deps in import_graph().items():
        if m.startswith("kit.models") or m in allowed:
            continue
        hit = sorted(d for d in deps if d.startswith(families))
        if hit:
            bad[m] = hit
    assert bad == {}
