"""The package's shape: the import graph has no cycle (counting imports inside functions), the generic Ray
Train loop imports no step package (roles plug into it), and the algorithm core imports without Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import xdray

PACKAGE = Path(xdray.__file__).parent
STEPS = ("xdray.teacher", "xdray.label", "xdray.distill.run", "xdray.distill.role", "xdray.search", "xdray.transfer")
CORE = ("xdray.distill.losses", "xdray.distill.objective", "xdray.distill.schedule", "xdray.distill.batches",
        "xdray.distill.student", "xdray.distill.units", "xdray.train.engine", "xdray.train.role")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the xdray modules it imports (``from pkg import name`` counts as pkg.name when that is a module)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("xdray")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xdray"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    out.add(sub if sub in modules else node.module)
        graph[name] = {m for m in out if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_package_init(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # a package's __init__ importing its own submodules is a re-export, not a dependency between rooms
    graph = {m: {d for d in deps if not (_is_package_init(m) and d.startswith(m + "."))} for m, deps in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_worker_loop_knows_no_step():
    graph = _graph()
    for module in (m for m in graph if m.startswith("xdray.train")):
        bad = {d for d in graph[module] if d.startswith(STEPS)}
        assert not bad, f"{module} imports step modules {sorted(bad)}"


def test_the_algorithm_core_imports_without_ray():
    blocker = "import sys; sys.modules['ray'] = None; sys.modules['mlflow'] = None; sys.modules['ray.train'] = None\n"
    code = blocker + "".join(f"import {m}\n" for m in CORE)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
