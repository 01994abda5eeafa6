"""The package's layering, checked on the source: who may import whom, and no import cycle.

* ``privquant.protocols`` (primitives, transport, preprocessing, protocols) depends on nothing of
  the project above it: not the integer program, not the op table, not quantization;
* ``privquant.ops`` (one module per op kind) builds on the data model (``privquant.ir``), the
  protocols and the SCI cost formulas, never on the program, quantization or the runtime;
* module-level imports between privquant modules form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "privquant"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """privquant modules imported by ``path`` (``from a import b`` counts ``a.b`` if a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("privquant")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("privquant")
        ):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
    return out


def _owners(mod: str) -> list[str]:
    """A module and the packages whose ``__init__`` importing it executes."""
    parts = mod.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1])]


UPWARD = (
    "privquant.program",
    "privquant.ir",
    "privquant.ops",
    "privquant.quant",
    "privquant.runtime",
    "privquant.serving",
    "privquant.launch",
    "privquant.report",
    "privquant.costs",
    "privquant.cli",
    "privquant.bench",
    "privquant.models",
    "privquant.baselines",
    "privquant.quantized",
    "privquant.artifact",
    "privquant.train",
)


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("privquant.protocols", UPWARD),
        (
            "privquant.ops",
            (
                "privquant.program",
                "privquant.quant",
                "privquant.runtime",
                "privquant.serving",
                "privquant.launch",
                "privquant.report",
                "privquant.costs",
                "privquant.cli",
                "privquant.bench",
                "privquant.quantized",
            ),
        ),
    ],
)
def test_no_import_up_the_layers(layer, forbidden):
    bad = []
    for mod, path in MODULES.items():
        if mod != layer and not mod.startswith(layer + "."):
            continue
        for imp in _imports(path, top_level_only=False):
            if any(imp == f or imp.startswith(f + ".") for f in forbidden):
                bad.append(f"{mod} imports {imp}")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    graph = {
        m: {o for imp in _imports(p, True) for o in _owners(imp) if o in MODULES and o != m}
        for m, p in MODULES.items()
    }
    # a package's __init__ is executed before its submodules: that edge is no cycle of ours
    for m in graph:
        graph[m] -= {o for o in graph[m] if m.startswith(o + ".")}
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def strong(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
            sccs.append(comp)

    for v in graph:
        if v not in index:
            strong(v)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    assert not cycles, cycles
