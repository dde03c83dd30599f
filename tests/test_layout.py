"""The layout holds: no import cycles, dependencies one way, formats named only in ``deploy/``, sizes,
and only the decided top-level names installed.

The import graph is read from the source (every ``import``, also inside functions: a lazy import is
still a dependency), so these tests need nothing installed beyond the project itself.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("t2tvit", "compress", "deploy", "benchmarks", "t2t")  # the order dependencies may point: left
INSTALLED = ("t2tvit", "compress", "deploy", "t2t")  # what the distribution installs (docs/development.md)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (the most specific module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], cycles


def test_dependencies_point_one_way() -> None:
    """t2tvit <- compress <- deploy <- benchmarks <- the CLI: nothing imports a package to its right,
    and nothing installed imports ``benchmarks``, which is not installed."""
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    wrong = [
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets
        if rank[b.split(".")[0]] > rank[a.split(".")[0]]
        or (b.split(".")[0] == "benchmarks" and a.split(".")[0] in INSTALLED)
    ]
    assert wrong == []


def test_only_deploy_names_a_format_module() -> None:
    from deploy.base import FORMATS

    format_modules = {f.module for f in FORMATS.values()}
    outside = [
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets & format_modules
        if a.split(".")[0] in ("t2tvit", "compress", "t2t")
    ]
    assert outside == []
    named = [
        f"{path.relative_to(ROOT)} names {m}"
        for m in format_modules
        for pkg in ("t2tvit", "compress", "t2t")
        for path in (ROOT / pkg).rglob("*.py")
        if f'"{m}"' in path.read_text()
    ]
    assert named == []


def test_command_line_modules_are_thin_and_functions_short() -> None:
    long_files = [p.name for p in (ROOT / "t2t").glob("*.py") if len(p.read_text().splitlines()) > 250]
    assert long_files == []
    builders = {"build_parser", "add_parser"}  # argparse builders may be long: one call per flag
    long_functions = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                    where = f"{node.name}@{path.relative_to(ROOT)}"
                    if node.name not in builders:
                        long_functions.append(where)
    assert long_functions == []


def test_the_distribution_installs_only_the_decided_names() -> None:
    """``benchmarks`` (the project's own measurement scripts) stays in the repository; see docs/development.md."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(str(ROOT), include=config["include"], exclude=config.get("exclude", ()))
    assert sorted({p.split(".")[0] for p in found}) == sorted(INSTALLED)
    assert all(p.split(".")[0] in INSTALLED for p in found)


def test_a_foreign_package_with_one_of_our_names_is_refused(tmp_path: Path) -> None:
    """A second distribution's top-level ``deploy`` (here: earlier on the path) would silently replace ours;
    ``t2t`` refuses to start then, in one sentence naming it and the fix."""
    from t2t.cli import name_clashes

    assert name_clashes() == {}
    foreign = tmp_path / "site" / "deploy"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("# somebody else's deployment tool\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    argv = [sys.executable, "-m", "t2t", "--version"]
    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "", res
    err = res.stderr.strip()
    assert err.count("\n") == 0 and f"`deploy` is {foreign / '__init__.py'}" in err, err
    assert "install t2tvit-edge in its own virtual environment" in err
