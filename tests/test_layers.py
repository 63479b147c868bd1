"""The layering rule of docs/architecture.md, checked over the source with `ast`.

Layers, bottom to top: `perfops` (the core) -> `blocks` and `decisions` -> `tasks` -> `flows` ->
`demo` -> `cli`. A module may import its own package and the packages below its own, never one
above it or beside it (`blocks` and `decisions` know nothing of each other); `decisions` import
no Prefect and no client of an outside system. And no two modules import each other, directly
or through others (imports inside functions count: they run too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    "perfops": 0,
    "blocks": 1,
    "decisions": 1,
    "tasks": 2,
    "flows": 3,
    "demo": 4,
    "cli": 5,
}
# Decisions are pure: none of these may be imported there, at any depth of the module.
IMPURE = (
    "prefect",
    "prefect_aws",
    "prefect_email",
    "psycopg",
    "psycopg_pool",
    "boto3",
    "botocore",
    "redis",
    "httpx",
    "requests",
    "slack_sdk",
    "prometheus_api_client",
    "smtplib",
    "socket",
    "subprocess",
)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.imported}"


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every absolute import in the file (`from a.b import c` gives `a.b` and `a.b.c`)."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def project_edges(root: Path, layers: dict[str, int]) -> list[Edge]:
    modules = project_modules(root, layers)
    edges: set[Edge] = set()
    for name, path in modules.items():
        for imported, line in imports_of(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(Edge(name, imported, line))
    return sorted(edges, key=lambda e: (e.importer, e.line, e.imported))


def layer_violations(root: Path, layers: dict[str, int]) -> list[str]:
    wrong = []
    for edge in project_edges(root, layers):
        low, high = edge.importer.split(".")[0], edge.imported.split(".")[0]
        if low != high and layers[high] >= layers[low]:
            where = "above" if layers[high] > layers[low] else "beside"
            wrong.append(f"{edge}: {high} is {where} {low}")
    return wrong


def impure_decisions(root: Path) -> list[str]:
    wrong = []
    for name, path in project_modules(root, ["decisions"]).items():
        for imported, line in imports_of(path):
            top = imported.split(".")[0]
            if top in IMPURE:
                wrong.append(f"{name} (line {line}) imports {top}")
    return sorted(set(wrong))


def cycles(root: Path, layers: dict[str, int]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in project_edges(root, layers):
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_no_import_goes_up_or_sideways() -> None:
    assert layer_violations(ROOT, LAYERS) == []


def test_decisions_do_no_io() -> None:
    assert impure_decisions(ROOT) == []


def test_no_import_cycles() -> None:
    assert cycles(ROOT, LAYERS) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from flows.run import go\n", "tasks.io (line 1) imports flows.run: flows is above tasks"),
        ("import cli.command\n", "tasks.io (line 1) imports cli.command: cli is above tasks"),
        (
            "def f() -> None:\n    from flows import run\n",
            "tasks.io (line 2) imports flows.run: flows is above tasks",
        ),
    ],
)
def test_the_rule_catches_an_upward_import(tmp_path: Path, source: str, expected: str) -> None:
    root = _tree(
        tmp_path,
        {
            "perfops/__init__.py": "",
            "tasks/__init__.py": "",
            "tasks/io.py": source,
            "flows/__init__.py": "",
            "flows/run.py": "from tasks import io\n",
            "cli/__init__.py": "",
            "cli/command.py": "import flows.run\n",
        },
    )
    layers = {"perfops": 0, "tasks": 2, "flows": 3, "cli": 5}
    assert expected in layer_violations(root, layers)


def test_the_rule_catches_a_sideways_import_and_impure_decision(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "blocks/__init__.py": "",
            "blocks/db.py": "",
            "decisions/__init__.py": "",
            "decisions/plan.py": "import blocks.db\nfrom prefect import task\n",
        },
    )
    assert layer_violations(root, {"blocks": 1, "decisions": 1}) == [
        "decisions.plan (line 1) imports blocks.db: blocks is beside decisions"
    ]
    assert impure_decisions(root) == ["decisions.plan (line 2) imports prefect"]


def test_the_rule_catches_a_cycle(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "demo/__init__.py": "",
            "demo/a.py": "from demo.b import x\n",
            "demo/b.py": "def x() -> None:\n    from demo.c import y\n",
            "demo/c.py": "import demo.a\n",
        },
    )
    assert cycles(root, {"demo": 4}) == [["demo.a", "demo.b", "demo.c"]]
