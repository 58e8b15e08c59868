"""The layering, checked by reading every module's imports (ast; nothing is imported).

    tarsctl (cli)                      on top: may use any package's public API
    tars_operator  tars_agent  tars_gateway   siblings: never import each other
    tars_common    tars_guests         shared plumbing; guest sources and their builder
    tars_api                           contracts, at the bottom

Every import counts, also those inside functions and under ``if TYPE_CHECKING:``: a deferred import
is still a dependency, and hiding a cycle behind one is what this test is for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("api", "common", "operator", "node-agent", "gateway", "guests", "cli")

# What each package may import from the project, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "tars_api": frozenset(),
    "tars_common": frozenset({"tars_api"}),
    "tars_guests": frozenset({"tars_api"}),
    "tars_operator": frozenset({"tars_api", "tars_common"}),
    "tars_agent": frozenset({"tars_api", "tars_common", "tars_guests"}),
    "tars_gateway": frozenset({"tars_api", "tars_common"}),
    "tarsctl": frozenset({"tars_api", "tars_common", "tars_guests", "tars_operator", "tars_agent", "tars_gateway"}),
}


def module_name(path: Path, source_root: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(roots: Iterable[Path] = (ROOT / r for r in SOURCE_ROOTS)) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    modules = {}
    for root in roots:
        for path in root.rglob("*.py"):
            name = module_name(path, root)
            if name.split(".")[0] in ALLOWED:
                modules[name] = path
    return modules


def imported_names(source: str, module: str, is_package: bool) -> set[tuple[str, str]]:
    """What ``source`` imports, as (module, name) pairs: ``import a.b`` gives (a.b, ""), ``from a import
    b`` gives (a, b), where b may be a submodule or a name defined in a. Relative imports are resolved."""
    names: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.update((base, alias.name) for alias in node.names)
    return names


def resolve(base: str, name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module an import refers to: the submodule ``base.name`` when it is one, else the
    longest prefix of ``base`` that is a module; None outside the project."""
    if name and f"{base}.{name}" in modules:
        return f"{base}.{name}"
    parts = base.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        targets = {target for base, name in names if (target := resolve(base, name, modules)) is not None}
        graph[module] = targets - {module}
    return graph


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                found.append(f"{module} imports {target}")
    return sorted(found)


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_every_package_is_walked(graph: dict[str, set[str]]) -> None:
    assert {module.split(".")[0] for module in graph} == set(ALLOWED)
    assert len(graph) > 80


def test_no_import_crosses_the_layers(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


# The checks themselves, on small made-up trees: each must catch what it is there to catch.


def made_up(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return import_graph(project_modules([tmp_path]))


def test_a_sibling_edge_and_an_upward_edge_are_caught(tmp_path: Path) -> None:
    graph = made_up(
        tmp_path,
        {
            "tars_gateway/__init__.py": "",
            "tars_gateway/server.py": "def main():\n    from tars_agent import tls\n",
            "tars_agent/__init__.py": "",
            "tars_agent/tls.py": "",
            "tars_api/__init__.py": "",
            "tars_api/x.py": "from tarsctl.fn import deploy\n",
            "tarsctl/__init__.py": "",
            "tarsctl/fn.py": "from tars_api import x\n",
        },
    )
    assert layer_violations(graph) == ["tars_api.x imports tarsctl.fn", "tars_gateway.server imports tars_agent.tls"]


def test_a_cycle_hidden_behind_deferred_and_relative_imports_is_caught(tmp_path: Path) -> None:
    graph = made_up(
        tmp_path,
        {
            "tars_agent/__init__.py": "",
            "tars_agent/catalog.py": "def default():\n    from tars_agent import functions\n",
            "tars_agent/functions.py": "from .runtimes.services import install\n",
            "tars_agent/runtimes/__init__.py": "",
            "tars_agent/runtimes/services.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..catalog import Catalog\n",
            "tars_agent/other.py": "from tars_agent.catalog import default\n",
        },
    )
    assert cycles(graph) == [["tars_agent.catalog", "tars_agent.functions", "tars_agent.runtimes.services"]]
