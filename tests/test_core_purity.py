"""The core stays sans-I/O and the packages stay in their layers, checked on the source.

The core decides and takes `now`; if it imported asyncio or a socket, even by way of a
helper, the simulations would no longer run the daemon's own code. Importing the modules
would prove nothing (this process has asyncio loaded already), so each module's imports are
read with `ast` and followed through our own packages: imports inside functions count,
imports under `if TYPE_CHECKING:` do not (they never run). A failure names the whole chain,
core module first.

The layer rule (vrrp, drbd and nfs import nothing of the layers above them) is checked on
every module of the package, type-only imports included: a settings type borrowed from agent
is a dependency on agent all the same. A direct check per module is enough, because the
allowed edges only point down.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "vrrp", "drbd", "nfs")
CORE = (
    "vrrp.packet",
    "vrrp.router",
    "agent.machine",
    "agent.guard",
    "agent.track",
    "agent.peerwire",
    "agent.heal",
    "agent.syncgroup",
    "agent.node",  # arrives with the Node core of issue 11: fails on this branch until that is merged
)
FORBIDDEN = ("asyncio", "socket", "subprocess", "pyroute2", "psutil", "threading", "select")
#: package -> the packages it must not import
LAYERS = {
    "vrrp": ("agent", "drbd", "nfs"),
    "drbd": ("agent", "vrrp", "nfs"),
    "nfs": ("agent", "vrrp"),
}


@dataclass(frozen=True)
class Import:
    name: str  # dotted, as imported ("from a.b import c" gives "a.b" and "a.b.c")
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in `source`, at any depth; `importlib.import_module("x")` counts too."""
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, True)
            for stmt in node.orelse:
                visit(stmt, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = (module if is_package else module.rpartition(".")[0]).split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append(Import(base, node.lineno, type_only))
            found.extend(Import(f"{base}.{alias.name}", node.lineno, type_only)
                         for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            found.append(Import(node.args[0].value, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source), False)
    return found


def module_file(module: str, root: Path = REPO) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _prefixes(name: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def forbidden_chains(core: str, root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """'core -> module -> ... -> forbidden (file:line)' for every forbidden import `core` reaches."""
    came_from: dict[str, str | None] = {core: None}
    for package in _prefixes(core)[:-1]:  # importing the core module runs its packages' __init__
        came_from[package] = core
    queue = deque(came_from)
    chains = []
    while queue:
        module = queue.popleft()
        path = module_file(module, root)
        if path is None:
            continue
        for imp in imports_of(path.read_text(), module, path.name == "__init__.py"):
            if imp.type_only:
                continue
            top = imp.name.split(".")[0]
            if top in FORBIDDEN:
                chain = [module]
                while (previous := came_from[chain[-1]]) is not None:
                    chain.append(previous)
                where = f"{path.relative_to(root)}:{imp.line}"
                chains.append(" -> ".join([*reversed(chain), f"{top} ({where})"]))
            elif top in packages:
                for name in _prefixes(imp.name):
                    if name not in came_from and module_file(name, root) is not None:
                        came_from[name] = module
                        queue.append(name)
    return sorted(set(chains))


@pytest.mark.parametrize("core", CORE)
def test_core_module_does_no_io(core: str) -> None:
    expected = Path(*core.split(".")).with_suffix(".py")
    assert module_file(core) is not None, (
        f"core module {core} is listed in CORE but {expected} does not exist: "
        "a listed core module must exist, the test skips nothing")
    chains = forbidden_chains(core)
    assert not chains, f"{core} must not import {', '.join(FORBIDDEN)}:\n" + "\n".join(chains)


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_nothing_from_the_layers_above(package: str) -> None:
    bad: dict[tuple[Path, int], str] = {}  # one line per import statement, named by its module
    for module, path in _modules(package):
        for imp in imports_of(path.read_text(), module, path.name == "__init__.py"):
            if imp.name.split(".")[0] in LAYERS[package]:
                bad.setdefault((path, imp.line), f"{module} -> {imp.name} ({path.relative_to(REPO)}:{imp.line})")
    assert not bad, f"{package} must import nothing from {', '.join(LAYERS[package])}:\n" + "\n".join(
        sorted(bad.values()))


def test_the_walk_follows_helpers_and_functions_and_skips_type_checking(tmp_path: Path) -> None:
    """The checker itself: a forbidden import two modules away, inside a function, is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import socket\n"
        "def later() -> None:\n"
        "    from . import helper\n")
    (pkg / "helper.py").write_text("import json\nfrom pkg.deeper import x\n")
    (pkg / "deeper.py").write_text("x = 1\ndef f() -> None:\n    import importlib\n"
                                   "    importlib.import_module('asyncio.subprocess')\n")
    assert forbidden_chains("pkg.core", tmp_path, ("pkg",)) == [
        "pkg.core -> pkg.helper -> pkg.deeper -> asyncio (pkg/deeper.py:4)"]
    (pkg / "__init__.py").write_text("import threading\n")
    assert "pkg.core -> pkg -> threading (pkg/__init__.py:1)" in forbidden_chains("pkg.core", tmp_path, ("pkg",))
