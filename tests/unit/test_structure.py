"""The shape every service shares (DESIGN.md §2.1), read from the source with ``ast``: no import cycles, protos
only at the edges, a client beside every servicer."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
ROLES = ("storage", "teacher", "trainer", "proxy")

#: Modules that hold a service's logic: they must not see a protobuf message.
PROTO_FREE = (
    *(f"services/{role}/core.py" for role in ROLES),
    "services/proxy/inference.py",
    "services/proxy/feedback.py",
    "services/proxy/adapters.py",
    "services/trainer/pipeline.py",
    "services/trainer/validation.py",
    *(f"services/{role}/domain.py" for role in ROLES),
    "services/common/domain.py",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in SERVICES.rglob("*.py")}


def imports(path: Path, known: set[str]) -> Iterator[str]:
    """Every module of ``known`` that ``path`` imports, anywhere in the file (top level, under
    ``TYPE_CHECKING``, inside functions)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        yield from (name for name in names if name in known)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports(path, known)) - {name} for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_services() -> None:
    graph = import_graph()
    assert "services.storage.client" in graph["services.proxy.server"], "the graph misses plain imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("relative", PROTO_FREE)
def test_logic_modules_import_no_protos(relative: str) -> None:
    path = ROOT / relative
    assert path.exists(), f"{relative} is missing"
    tree = ast.parse(path.read_text())
    protos = sorted(
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if "_pb2" in alias.name or "_pb2" in (getattr(node, "module", None) or "")
    )
    assert protos == [], f"{relative} imports protos: {protos}"


def imports_of(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("role", ROLES)
def test_every_service_ships_its_client(role: str) -> None:
    client = SERVICES / role / "client.py"
    assert client.exists(), f"services/{role}/client.py is missing"
    tree = ast.parse(client.read_text())
    bases = {
        base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
    }
    assert "ServiceClient" in bases, f"services/{role}/client.py builds on no ServiceClient"


def test_rpc_errors_are_mapped_in_one_place() -> None:
    """``from_rpc_error`` is called by the shared call helper only; every client goes through it."""
    callers = sorted(
        str(path.relative_to(ROOT))
        for path in SERVICES.rglob("*.py")
        if path.name != "errors.py" and "from_rpc_error(" in path.read_text()
    )
    assert callers == ["services/common/client.py"]


#: The rooms where protos meet domain types (DESIGN.md §2.1).
EDGES = frozenset({"convert.py", "servicer.py", "client.py", "server.py"})


def test_protos_stay_at_the_edges() -> None:
    """Outside the edge rooms no module of ``services/`` imports a contract message."""
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in SERVICES.rglob("*.py")
        if path.name not in EDGES
        for name in imports_of(path)
        if name.startswith("claas.v1")
    )
    assert offenders == []
