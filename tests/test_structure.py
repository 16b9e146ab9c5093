"""The shape of the code base, checked so that a rename or a stray import cannot break it silently.

* every module of ``anysat``, ``pipelines``, ``ray_jobs`` and ``infra`` and every benchmark script imports;
* every entrypoint (a module with an ``if __name__ == "__main__":`` block) answers ``--help``;
* project imports form a DAG that respects the layering ``anysat < pipelines < ray_jobs < infra``;
* imports sit at module level, except for the few optional heavy dependencies named below;
* no module of ``ray_jobs`` grows past 400 lines.

Everything is read from the source tree, so a new module or entrypoint is covered without editing
this file.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("anysat", "pipelines", "ray_jobs", "infra")  # in layering order: each may import only earlier ones
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
RAY_JOBS_MAX_LINES = 400

# Third-party packages a function may import. Each is either expensive to import in a process that
# usually does not need it, or not installed everywhere. Everything else -- the standard library,
# the core dependencies and all project modules -- is imported at module level, so that a module's
# dependencies are visible at its top and an import error shows up when the module is imported.
OPTIONAL_HEAVY = {
    "matplotlib": "figures, drawn only when a run logs plots (0.5 s to import)",
    "mlflow": "the MLflow client, used by the driver and rank 0 only (0.9 s to import)",
    "sklearn": "the HLS Burn Scars reader's train/val split (0.9 s to import)",
    "torch": "two raw archives ship torch-pickled files; the ingest does not load torch otherwise "
             "(0.8 s and 180 MB per Ray Data worker)",
    "boto3": "comes with the dev extra (moto); only the local stack's S3 service uses it",
    "xarray": "georeferenced tiles (StoreReader.open_tile); every read task imports the store "
              "(with rioxarray 2.5 s to import)",
    "rioxarray": "registers the .rio accessor of open_tile's DataArray (see xarray)",
}
# Project imports inside a function, allowed by name. The only one: ``from anysat import AnySat``
# resolves lazily (PEP 562 ``__getattr__``) because the ingest imports ``anysat.sensors``, which
# runs ``anysat/__init__.py``, and must not load torch in every Ray Data worker (see above).
LAZY_PROJECT_IMPORTS = {("anysat", "anysat.model")}


# ---------------------------------------------------------------------- reading the source tree
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the four packages."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` at module level."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def _has_main_guard(path: Path) -> bool:
    return any(_is_main_guard(node) for node in _tree(path).body)


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the importing module
    targets: tuple[str, ...]  # absolute dotted names: "a.b" for ``import a.b``, "a.b.x" for ``from a.b import x``
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def _walk_imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        else:
            yield from _walk_imports(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def imports_of(path: Path) -> list[Import]:
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    out = []
    for node, in_function in _walk_imports(_tree(path)):
        if isinstance(node, ast.Import):
            targets = tuple(a.name for a in node.names)
        else:
            base = node.module or ""
            if node.level:  # relative: anchor on the importing module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = tuple(f"{base}.{a.name}" for a in node.names)
        out.append(Import(path, node.lineno, module, targets, in_function))
    return out


def project_target(name: str) -> str | None:
    """The project module an imported dotted name lives in (``anysat.model.AnySat`` -> ``anysat.model``)."""
    modules = project_modules()
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return None


@functools.cache
def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported project module -> [file:line, ...]}, top-level and function-level imports alike.

    A module importing itself (``pipelines.ingest`` re-imports itself under its own name in its
    ``__main__`` block, so that Ray pickles its functions by reference) is not an edge."""
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in project_modules()}
    for module, path in project_modules().items():
        for imp in imports_of(path):
            for target in {project_target(t) for t in imp.targets} - {None, module}:
                graph[module].setdefault(target, []).append(imp.where)
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # shortest cycle through the component's first module (breadth first)
        members, start = set(comp), min(comp)
        parent: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parent:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in parent:
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while (path[-1] != start or len(path) == 1) and path[-1] in parent:
            path.append(parent[path[-1]])
        cycles.append(path[::-1])
    return cycles


def entrypoints() -> list[tuple[str, list[str]]]:
    """(name, argv) of every runnable module: the package modules with a ``__main__`` block (run with
    ``-m``) and the benchmark scripts (run by path, as ``make bench-*`` does)."""
    found = [(m, ["-m", m]) for m, p in project_modules().items() if _has_main_guard(p)]
    found += [(f"benchmarks/{p.name}", [str(p.relative_to(REPO))]) for p in BENCHMARKS]
    return found


# ---------------------------------------------------------------------- the checks
@pytest.mark.parametrize("module", sorted(project_modules()))
def test_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_without_running(path):
    # a script without the guard would run its whole benchmark here
    assert _has_main_guard(path), f"{path.name}: no `if __name__ == \"__main__\":` block"
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name}: no main()"


def test_entrypoints_are_discovered():
    names = {name for name, _ in entrypoints()}
    expected = {"ray_jobs.pretrain", "ray_jobs.finetune", "ray_jobs.evaluate", "ray_jobs.embed",
                "pipelines.ingest", "pipelines.samples", "infra.local_stack", "infra.demo"}
    assert expected <= names, f"not found as entrypoints: {sorted(expected - names)}"


def test_every_entrypoint_answers_help():
    """``--help`` of every entrypoint, each run as ``__main__`` in a child forked from one interpreter that
    imported torch, Ray and MLflow once (``help_runner.py``): a cold interpreter per entrypoint spends
    about ten seconds of a core on those imports alone. ``test_module_imports`` covers each module's own
    imports."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    eps = entrypoints()
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "help_runner.py"),
                           json.dumps([argv for _, argv in eps])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [f"{name}: exit {r['rc']}\n{r['out'][-1500:]}"
              for (name, _), r in zip(eps, results) if r["rc"] != 0 or "usage" not in r["out"].lower()]
    assert not failed, "\n\n".join(failed)


def test_the_checks_see_what_they_check():
    """The graph resolves relative imports, and the cycle finder finds a planted cycle."""
    graph = import_graph()
    assert "anysat.sensors" in graph["anysat.model.encoder"]  # from ..sensors import ...
    assert "anysat.model" in graph["anysat.pretrain.jepa"]  # from ..model import AnySat
    planted = {"a": {"b": []}, "b": {"c": [], "d": []}, "c": {"a": []}, "d": {}}
    assert _cycles(planted) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = _cycles(graph)
    report = []
    for cycle in cycles:
        steps = [f"  {a} -> {b}  ({', '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
        report.append("\n".join(steps))
    assert not cycles, "import cycles:\n" + "\n\n".join(report)


def test_layering():
    """anysat < pipelines < ray_jobs < infra: a package imports only the ones before it."""
    bad = []
    for module, targets in import_graph().items():
        rank = PACKAGES.index(module.split(".")[0])
        for target, where in targets.items():
            if PACKAGES.index(target.split(".")[0]) > rank:
                bad.append(f"{module} imports {target} ({', '.join(where)})")
    assert not bad, "\n".join(bad)


def test_no_function_level_imports():
    """Imports at module level, except the optional heavy dependencies of ``OPTIONAL_HEAVY``; a
    project module is never imported inside a function (that is how import cycles hide)."""
    bad = []
    for path in [*project_modules().values(), *BENCHMARKS]:
        for imp in imports_of(path):
            if not imp.in_function:
                continue
            for target in imp.targets:
                project = project_target(target)
                if project is not None and (imp.module, project) not in LAZY_PROJECT_IMPORTS:
                    bad.append(f"{imp.where}: {target} (a project module)")
                elif project is None and target.split(".")[0] not in OPTIONAL_HEAVY:
                    bad.append(f"{imp.where}: {target}")
    assert not bad, "function-level imports:\n" + "\n".join(bad)


def test_ray_jobs_modules_are_small():
    sizes = {p.relative_to(REPO): len(p.read_text().splitlines()) for p in sorted((REPO / "ray_jobs").rglob("*.py"))}
    big = {str(p): n for p, n in sizes.items() if n > RAY_JOBS_MAX_LINES}
    assert not big, f"modules over {RAY_JOBS_MAX_LINES} lines: {big}"
