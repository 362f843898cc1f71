"""What the day-2 tasks share: naming the node, where backups live, small remote helpers."""

from __future__ import annotations

from pathlib import Path

from hardway.chapters.base import Context
from hardway.errors import HardwayError
from hardway.inventory import Inventory, Node
from hardway.remote import CommandResult
from hardway.state import PkiState


def controller(inv: Inventory, name: str) -> Node:
    """The controller called ``name``; one clear line for an unknown node or one that runs no member."""
    node = inv.node(name)  # "no node named ..." with the known names
    if not node.is_controller:
        names = ", ".join(c.name for c in inv.controllers)
        raise HardwayError(f"{name} is not an etcd member: members run on the controllers ({names}) in {inv.path}")
    return node


def backup_dir(state: PkiState, inv: Inventory) -> Path:
    """``backups/<cluster>/`` beside the PKI state dir (pki/<cluster> -> pki/backups/<cluster>)."""
    return state.root.parent / "backups" / inv.cluster_name


def run_on(ctx: Context, node: Node, command: str, *, check: bool = True,
           timeout: float | None = None) -> CommandResult:
    r = ctx.connector(ctx.inv, node)
    try:
        return r.run(command, check=check, timeout=int(timeout or ctx.timeout))
    finally:
        r.close()
