"""The house's shape: rooms by stage, imports only downwards, no cycles, no private calls across modules.

Every import in ``curator/`` is read with ``ast``: module level, inside functions, and inside
``if TYPE_CHECKING:`` blocks alike, so a circle hidden behind a type-only import still fails.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "curator"

# Which rooms each room may import (besides itself and the shared vocabulary below). Read it as
# the stack, lowest first: io < distributed, model < gradients, store < influence, alignment < curation < validation.
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    "distributed": {"io"},
    "model": {"io"},
    "gradients": {"model", "io"},
    "store": {"io"},
    "influence": {"gradients", "store", "model", "distributed", "io"},
    "alignment": {"model", "distributed", "io"},
    "generation": {"alignment", "model", "store", "io"},
    "curation": {"influence", "alignment", "io"},
    "validation": {"influence", "alignment", "gradients", "store", "model", "io"},
}
# The shared vocabulary every room may use, and what each of those may import in turn.
SHARED: dict[str, set[str]] = {
    "curator": {"curator.lazy"},  # the package itself: __version__ and the lazy verbs
    "curator.lazy": set(),
    "curator.errors": set(),
    "curator.config": {"curator.errors"},
}
# Top-level modules above every room: they may import anything in the core.
TOP = {"curator.demo", "curator.assets", "curator.assets.demo"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    p = CORE.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def is_package(name: str) -> bool:
    return (CORE.parent.joinpath(*name.split(".")) / "__init__.py").is_file()


def core_modules() -> dict[str, ast.Module]:
    return {module_name(f): ast.parse(f.read_text(), str(f)) for f in sorted(CORE.rglob("*.py"))}


def imports(name: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement anywhere in the file."""
    package = name if is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def edges() -> dict[str, dict[str, int]]:
    """module -> {core module it imports: line}; ``from pkg import sub`` counts as an import of pkg.sub."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name, tree in core_modules().items():
        graph[name]
        for target, names, line in imports(name, tree):
            if target != "curator" and not target.startswith("curator."):
                continue
            subs = [f"{target}.{n}" for n in names if is_module(f"{target}.{n}")]
            for t in subs or [target]:
                graph[name].setdefault(t, line)
    return graph


def room_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED:
        return parts[1]
    return None


def test_no_import_cycles_type_only_imports_included() -> None:
    graph = edges()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, {}):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_rooms_import_only_downwards() -> None:
    bad = []
    for name, targets in edges().items():
        for target, line in targets.items():
            if name in TOP or target == name:
                continue
            src, dst = room_of(name), room_of(target)
            if src is None:  # the shared vocabulary
                if target not in SHARED.get(name, set()):
                    bad.append(f"{name}:{line} imports {target}: the shared vocabulary imports no room")
            elif dst is None:
                if target not in SHARED:
                    bad.append(f"{name}:{line} imports {target}, which is above every room")
            elif dst != src and dst not in ALLOWED[src]:
                bad.append(f"{name}:{line} imports {target}: room {src} may import only {sorted(ALLOWED[src]) or 'no other room'}")
    assert not bad, "\n".join(bad)


def test_the_direction_table_itself_has_no_cycle() -> None:
    def reach(room: str, seen: set[str]) -> set[str]:
        for r in ALLOWED[room] - seen:
            seen.add(r)
            reach(r, seen)
        return seen

    assert all(room not in reach(room, set()) for room in ALLOWED)
    assert set(ALLOWED) == {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()} - {"assets"}
    assert "store" not in ALLOWED["gradients"] and not ALLOWED["io"]


def test_core_modules_name_the_module_not_a_rooms_reexport() -> None:
    """Inside the core, ``from curator.store import GradientStore`` would hide an edge behind a lazy table."""
    bad = []
    for name, tree in core_modules().items():
        for target, names, line in imports(name, tree):
            if target.startswith("curator.") and is_package(target) and target != "curator":
                hidden = [n for n in names if not is_module(f"{target}.{n}")]
                if hidden:
                    bad.append(f"{name}:{line}: from {target} import {', '.join(hidden)}")
            if target == "curator" and name != "curator":
                hidden = [n for n in names if n != "__version__" and not is_module(f"curator.{n}")]
                if hidden:
                    bad.append(f"{name}:{line}: from curator import {', '.join(hidden)}")
    assert not bad, "import from the defining module instead:\n" + "\n".join(bad)


# Private attributes of third-party objects that curator has to touch, and why.
THIRD_PARTY_PRIVATE = {
    "_attn_implementation",  # transformers' config: the packed attention swaps it for one block
    "_supports_attention_backend",  # transformers' model: whether AttentionInterface is honoured
}


def defined_here(tree: ast.Module) -> set[str]:
    """Names a module defines itself: functions, classes, fields, and attributes it sets on self."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self":
            out.add(node.attr)
    return out


def test_no_module_uses_another_modules_private_names() -> None:
    """No ``from curator.x import _y``, and no ``obj._y`` unless this module defines ``_y`` itself."""
    bad = []
    for name, tree in core_modules().items():
        own = defined_here(tree)
        for target, names, line in imports(name, tree):
            if target.startswith("curator"):
                bad.extend(f"{name}:{line}: imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if node.attr in own:
                    continue
                if node.attr not in THIRD_PARTY_PRIVATE:
                    bad.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["curator"] + [f"curator.{room}" for room in ALLOWED])
def test_every_reexported_name_resolves_and_none_shadows_a_submodule(package: str) -> None:
    mod = importlib.import_module(package)
    assert mod.__all__ and mod.__doc__ and len(mod.__doc__.strip().splitlines()) <= 12
    for name in mod.__all__:
        assert not name.startswith("_")
        assert not is_module(f"{package}.{name}"), f"{package}.{name} is both a submodule and a re-export"
        assert getattr(mod, name) is not None
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        getattr(mod, "nope")


def test_import_curator_is_light_and_verbs_load_on_use() -> None:
    code = (
        "import sys, json\n"
        "import curator\n"
        "light = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'faiss', 'transformers', 'numpy'))\n"
        "from curator import index_file, export, run_validate\n"
        "print(json.dumps([light, index_file.__module__, export.__module__, 'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    light, index_mod, export_mod, torch_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert light == []
    assert (index_mod, export_mod, torch_loaded) == ("curator.influence.indexing", "curator.curation.export", True)


def test_no_core_module_is_over_400_lines() -> None:
    long = {module_name(f): n for f in CORE.rglob("*.py") if (n := len(f.read_text().splitlines())) > 400}
    assert not long, long
