"""What each node receives: the files of every chapter that targets it, in the registry's order.

Pure: no I/O but reading the PKI state files (and hashing local binaries). No node ever receives
another node's key: each chapter's ``plan_files`` says who gets what.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hardway.chapters import REGISTRY, for_node
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.planner import files_for
from hardway.state import PkiState


def node_files(inv: Inventory, node: str | Node, state: PkiState, *, chapters: Iterable[str] | None = None,
               cache_dir: Path | None = None) -> list[File]:
    """Everything ``node`` receives (limited to the chapters named in ``chapters``), in chapter order."""
    n = inv.node(node if isinstance(node, str) else node.name)
    wanted = None if chapters is None else set(chapters)
    if wanted is not None:
        unknown = sorted(wanted - {c.name for c in REGISTRY})
        if unknown:
            raise HardwayError(f"unknown chapter(s) {', '.join(unknown)}; known: "
                               f"{', '.join(c.name for c in REGISTRY)}")
    selected = [c for c in for_node(inv, n) if wanted is None or c.name in wanted]
    return files_for(inv, n, state, selected, cache_dir)


def chapter_files(inv: Inventory, node: str | Node, state: PkiState, chapter: str,
                  cache_dir: Path | None = None) -> list[File]:
    """What ``chapter`` puts on ``node`` (empty if the node takes no part in it)."""
    return node_files(inv, node, state, chapters=(chapter,), cache_dir=cache_dir)
