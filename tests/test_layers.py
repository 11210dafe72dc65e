"""The packages of `nexus_trio` import one way: from the edge with the client down to
the registry, never back up (type-checking imports included).

    api → dialects → proxy, routing → upstream → registry → config, errors
"""

from __future__ import annotations

import ast
from pathlib import Path

import nexus_trio

PACKAGE = Path(nexus_trio.__file__).parent

# Each part of the package and its layer: a module may import its own part and parts
# of lower layers only. A new part must be placed here.
LAYERS: dict[str, int] = {
    "": 0,  # the package itself (__version__)
    "errors": 0,
    "jsonparse": 0,
    "drain": 0,
    "instance": 0,  # this Nexus's id on the wire (X-Nexus-Via)
    "aging": 0,  # a bounded map that forgets (the registry's conversation table)
    "testing": 0,  # simulated backends: standalone, they speak to Nexus only over sockets
    "config": 1,
    "logs": 2,
    "registry": 2,
    "policy": 3,  # keys, limits, budgets, privacy, the queue
    "store": 4,  # where keys and usage outlive the process
    "catalog": 3,
    "upstream": 3,
    "backends": 4,
    "routing": 4,
    "discovery": 5,
    "health": 6,
    "gatekeeper": 5,  # keys, limits and budgets at the door (policy and store below)
    "load_watch": 5,  # the health watcher runs it
    "fleet": 6,
    "proxy": 5,
    "dialects": 6,
    "observe": 6,
    "gateway": 7,
    "api": 8,
    "supervisor": 9,
    "cli": 11,  # the `nexus` command, its client of the admin API included
    "__main__": 12,
}


def part_of(module: str) -> str:
    """``nexus_trio.proxy.forward`` → ``proxy``; ``nexus_trio`` → ``""``."""
    names = module.split(".")
    assert names[0] == "nexus_trio", module
    return names[1] if len(names) > 1 else ""


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every ``nexus_trio`` module that ``path`` (under ``root``) imports, anywhere in it."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            if base == "nexus_trio":  # `from nexus_trio import jsonparse`
                found |= {f"nexus_trio.{alias.name}" for alias in node.names}
            found.add(base)
    return {name for name in found if name.split(".")[0] == "nexus_trio"}


def test_every_part_has_a_layer() -> None:
    parts = {part_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    parts = {p.removesuffix(".__init__") for p in parts}
    assert parts - {"__init__"} <= set(LAYERS), sorted(parts - set(LAYERS))


def test_imports_point_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        importer = part_of(module.removesuffix(".__init__"))
        for imported in imports_of(path):
            target = part_of(imported)
            if target in LAYERS and target != importer and LAYERS[target] >= LAYERS[importer]:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk finds imports in functions and under TYPE_CHECKING, relative ones too."""
    source = tmp_path / "nexus_trio" / "registry.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from nexus_trio.backends.checkup import Checkup\n"
        "def f():\n    from .proxy import forward\n"
    )
    found = imports_of(source, root=tmp_path)
    assert found == {"nexus_trio.backends.checkup", "nexus_trio.proxy"}
