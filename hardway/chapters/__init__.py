"""The chapters, in the tutorial's order: the one list everything else derives from.

Adding a chapter is one module plus one line in REGISTRY. `verify --chapter`, rotation's restart
order, what the lab hides from its nodes and the walkthrough all read it; no chapter's name is
spelled anywhere else.
"""

from __future__ import annotations

from hardway.chapters import control_plane, etcd, pki, pod_routes, smoke, workers
from hardway.chapters.base import Chapter, Context
from hardway.errors import HardwayError
from hardway.inventory import Inventory, Node

REGISTRY: tuple[Chapter, ...] = (
    pki.CHAPTER,
    etcd.CHAPTER,
    control_plane.CHAPTER,
    workers.CHAPTER,
    pod_routes.CHAPTER,
    smoke.CHAPTER,
)

__all__ = ["REGISTRY", "Chapter", "Context", "by_name", "distributed_binaries", "distributed_units",
           "for_node", "owner_of", "restart_order", "verifiable"]


def by_name(name: str) -> Chapter:
    for chapter in REGISTRY:
        if chapter.name == name:
            return chapter
    raise HardwayError(f"no chapter named {name!r}; chapters: {', '.join(c.name for c in REGISTRY)}")


def for_node(inv: Inventory, node: Node) -> list[Chapter]:
    """The chapters that put files on ``node``, in order."""
    return [c for c in REGISTRY if node in c.targets(inv)]


def verifiable() -> tuple[Chapter, ...]:
    """Chapters with checks of their own: the choices of `verify --chapter`."""
    return tuple(c for c in REGISTRY if type(c).checks is not Chapter.checks)


def restart_order() -> tuple[str, ...]:
    """Every service, backends first: the registry's order, then each chapter's own unit order."""
    return tuple(u for c in REGISTRY for u in c.units)


def owner_of(unit: str) -> Chapter:
    """The chapter whose service ``unit`` is."""
    for chapter in REGISTRY:
        if unit in chapter.units:
            return chapter
    raise HardwayError(f"no chapter runs a service named {unit!r}")


def distributed_units() -> tuple[str, ...]:
    """Unit files hardway installs at /etc/systemd/system/<unit>.service."""
    return tuple(f"{u}.service" for u in restart_order())


def distributed_binaries() -> tuple[str, ...]:
    """Binaries hardway installs (basenames); the host's copies are hidden from lab nodes."""
    return tuple(dict.fromkeys(b for c in REGISTRY for b in c.binaries))
