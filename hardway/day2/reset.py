"""``invoke reset NODE --yes``: take back what hardway did on a node, and nothing else.

What is removed comes from the node's deployment record (``/var/lib/hardway/deployed.json``), not
from a list of paths: exactly the files hardway installed there. A recorded file that someone has
changed since is moved aside (``<path>.hardway-reset-<time>``), not deleted; an original that
``--adopt`` kept (``<path>.hardway-orig-<time>``) is put back. Services are stopped and disabled
first (the registry's units for the node's chapters, and any unit file in the record, e.g. the
snapshot timer); data dirs (``Chapter.data_dirs``) are moved aside; what a chapter did besides
files (``Chapter.reset_commands``: pod routes) is undone. On a controller whose etcd member
others keep serving, the member is removed from the cluster first (leadership handed on if it
led), so the cluster stays healthy; a later ``invoke bootstrap-etcd`` joins the node as a new
member on its empty data dir.

Refused without ``--yes``; refused for every controller at once (or so many that etcd would lose
quorum) unless ``--all``. Re-running finishes an interrupted reset.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from hardway.chapters import for_node
from hardway.chapters.base import Context
from hardway.chapters.etcd import datadir
from hardway.chapters.etcd.cluster import ClusterView, gather_view, quorum
from hardway.chapters.etcd.files import ctl
from hardway.day2.common import run_on
from hardway.deploy import HARDWAY_DIR, RECORD, RECORD_FACT, STAGING, Deployed
from hardway.errors import HardwayError
from hardway.facts import file_hashes, gather
from hardway.inventory import Inventory, Node
from hardway.paths import UNIT_DIR
from hardway.procedure import Procedure

# Directories a reset never removes, even when hardway's files were the last in them.
SYSTEM_DIRS = frozenset({"/", "/etc", "/etc/systemd", UNIT_DIR, "/etc/modules-load.d", "/etc/sysctl.d", "/opt",
                         "/usr", "/usr/bin", "/usr/local", "/usr/local/bin", "/usr/local/sbin", "/var", "/var/lib",
                         "/run", HARDWAY_DIR})


@dataclass
class NodeReset:
    node: Node
    record: dict[str, Deployed]
    changed: list[str]  # recorded files whose bytes differ from the record: moved aside, not deleted
    units: list[str]


def unit_names(record: dict[str, Deployed], chapter_units: Sequence[str]) -> list[str]:
    """Units whose file hardway installed: the chapters' services in their order, then the others (a
    timer first, so it cannot start its service again). A unit hardway did not install (a packaged
    containerd) is never stopped."""
    names = [f"{u}.service" for u in chapter_units if f"{UNIT_DIR}/{u}.service" in record]
    for path in sorted(record):
        if posixpath.dirname(path) == UNIT_DIR and path.endswith((".service", ".timer")):
            base = posixpath.basename(path)
            if base not in names:
                names.insert(0, base) if base.endswith(".timer") else names.append(base)
    return names


def emptied_dirs(paths: Sequence[str]) -> list[str]:
    """Parent dirs of ``paths`` to try removing (deepest first; rmdir keeps any that still hold something)."""
    dirs: set[str] = set()
    for p in paths:
        d = posixpath.dirname(p)
        while d not in SYSTEM_DIRS and d.count("/") > 1:
            dirs.add(d)
            d = posixpath.dirname(d)
    return sorted(dirs, key=lambda d: (-d.count("/"), d))


def remove_files_command(record: dict[str, Deployed], changed: Sequence[str], stamp: str) -> str:
    q = shlex.quote
    parts = []
    for path in sorted(record):
        if path in changed:
            parts.append(f"mv -f -- {q(path)} {q(f'{path}.hardway-reset-{stamp}')}")
        else:
            parts.append(f"rm -f -- {q(path)}")
        # an original that `--adopt` kept goes back where it was
        parts.append(f"o=$(ls -1d -- {q(path)}.hardway-orig-* 2>/dev/null | tail -n 1); [ -z \"$o\" ] || "
                     f"mv -f -- \"$o\" {q(path)}")
    parts.append(f"rm -rf -- {STAGING} {RECORD}")
    dirs = emptied_dirs(list(record))
    if dirs:
        parts.append("rmdir --ignore-fail-on-non-empty -- " + " ".join(q(d) for d in dirs) + " 2>/dev/null || true")
    parts.append(f"rmdir --ignore-fail-on-non-empty -- {HARDWAY_DIR} 2>/dev/null || true")
    return "; ".join(parts)


def every_controller(inv: Inventory, nodes: Sequence[Node], all_controllers: bool) -> None:
    """Refused before any node is asked: resetting every controller ends the etcd cluster."""
    resetting = [n for n in nodes if n.is_controller]
    if resetting and not all_controllers and len(resetting) == len(inv.controllers):
        raise HardwayError(f"{', '.join(n.name for n in resetting)} are every controller: the etcd cluster and all "
                           "its data go with them (moved aside); pass --all to mean it, or reset fewer")


def guard(ctx: Context, nodes: Sequence[Node], all_controllers: bool, view: ClusterView | None) -> None:
    inv = ctx.inv
    resetting = [n for n in nodes if n.is_controller]
    if not resetting or all_controllers:
        return
    total = len(view.members) if view and view.members else len(inv.controllers)
    left = [v for v in (view.in_cluster if view else []) if v.node not in resetting]
    if len(left) < quorum(total - len(resetting)):
        names = ", ".join(v.node.name for v in left) or "none"
        raise HardwayError(f"resetting {', '.join(n.name for n in resetting)} leaves {len(left)} serving etcd "
                           f"member(s) ({names}) of {total - len(resetting)}: quorum lost; start the stopped members "
                           "first (`invoke bootstrap-etcd`), reset one controller at a time, or pass --all")


def plan(ctx: Context, names: Sequence[str], *, all_controllers: bool = False) -> Procedure:
    inv = ctx.inv
    nodes = [inv.node(n) for n in dict.fromkeys(names)]  # "no node named ..." with the known names
    if not nodes:
        raise HardwayError("reset: name at least one node (NODE, or several separated by commas)")
    every_controller(inv, nodes, all_controllers)
    view = gather_view(inv, ctx.connector) if any(n.is_controller for n in nodes) else None
    guard(ctx, nodes, all_controllers, view)
    stamp = time.strftime("%Y%m%d%H%M%S")
    proc = Procedure(f"reset {', '.join(n.name for n in nodes)}", ctx.progress)
    finish = f"invoke reset {','.join(n.name for n in nodes)} --yes" + (" --all" if all_controllers else "")
    for node in nodes:
        _plan_node(ctx, proc, node, view if not all_controllers else None, stamp, finish,
                   [n for n in nodes if n.is_controller])
    return proc


def _survey(ctx: Context, node: Node) -> NodeReset:
    r = ctx.connector(ctx.inv, node)
    try:
        record = gather(r, [RECORD_FACT])[RECORD_FACT]
        hashes = gather(r, [file_hashes(sorted(record))])[file_hashes(sorted(record))] if record else {}
    finally:
        r.close()
    changed = [p for p, e in record.items() if hashes.get(p) not in (None, e.sha256)]
    units = unit_names(record, [u for ch in for_node(ctx.inv, node) for u in ch.units])
    return NodeReset(node, record, changed, units)


def _plan_node(ctx: Context, proc: Procedure, node: Node, view: ClusterView | None, stamp: str, finish: str,
               resetting: Sequence[Node]) -> None:
    inv = ctx.inv
    found = _survey(ctx, node)
    n = node.name
    chapters = for_node(inv, node)
    member, others = None, []
    if view is not None and node.is_controller:
        me = view[n]
        member = view.member_at(inv.etcd_peer_url(node))
        others = [v for v in view.in_cluster if v.node not in resetting]
        if member is not None and others and me.healthy and view.leader and me.member_id == view.leader:
            move = ctl(inv, node, f"move-leader {others[0].member_id:x}")
            proc.add(n, f"hand etcd leadership to {others[0].node.name}", move, partial(run_on, ctx, node, move),
                     final=finish)
    if found.units:
        stop = f"systemctl disable --now {' '.join(found.units)} 2>/dev/null; systemctl stop {' '.join(found.units)}"
        proc.add(n, f"stop and disable {', '.join(found.units)}", stop, partial(run_on, ctx, node, stop + "; true"),
                 final=finish)
    if view is not None and node.is_controller and member is not None and others:
        via = others[0].node
        eps = ",".join(inv.etcd_client_url(v.node) for v in others)
        unlist = ctl(inv, via, f"member remove {member.hex}", eps)
        proc.add(via.name, f"remove {n}'s etcd member {member.hex} from the cluster (the others keep serving)",
                 unlist, partial(run_on, ctx, via, unlist), final=finish)
    for ch in chapters:
        for cmd in ch.reset_commands(ctx, node):
            proc.add(n, f"undo {ch.name}: {cmd}", cmd, partial(run_on, ctx, node, cmd), final=finish)
    if found.record:
        kept = f" ({len(found.changed)} changed since: moved aside as .hardway-reset-{stamp})" if found.changed else ""
        wipe = remove_files_command(found.record, found.changed, stamp)
        proc.add(n, f"remove the {len(found.record)} files hardway deployed{kept}, and its record",
                 wipe.replace("; ", "\n"), partial(run_on, ctx, node, wipe), final=finish)
        reload = "systemctl daemon-reload; systemctl reset-failed 2>/dev/null; true"
        proc.add(n, "daemon-reload", reload, partial(run_on, ctx, node, reload))
    deployed = {e.chapter for e in found.record.values()}
    for ch in [ch for ch in chapters if ch.name in deployed]:  # a data dir of something hardway never ran: not ours
        for d in ch.data_dirs(inv):
            move = (f"if [ -n \"$(ls -A {shlex.quote(d)} 2>/dev/null | grep -vx lost+found)\" ]; then "
                    f"{datadir.move_aside(d, stamp)}; fi")
            proc.add(n, f"move {d} aside to {datadir.removed_dir(d, stamp)} (never deleted)", move,
                     partial(run_on, ctx, node, move), final=finish)
    if not proc.steps or all(s.where != n for s in proc.steps):
        proc.notes.append(f"{n}: hardway deployed nothing there; nothing to do")


def reset(ctx: Context, names: Sequence[str], *, yes: bool = False, all_controllers: bool = False,
          dry_run: bool = False) -> tuple[Procedure, float]:
    if not yes and not dry_run:
        shown = ",".join(names) or "NODE"
        raise HardwayError(f"reset removes everything hardway deployed on {shown} (its data dirs are moved aside); "
                           f"re-run with --yes to do it, or with --dry-run to see the steps")
    proc = plan(ctx, names, all_controllers=all_controllers)
    return proc, (0.0 if dry_run else proc.run())

