"""``invoke etcd.restore SNAPSHOT``: every member from the same snapshot, as a new cluster.

What etcd documents for disaster recovery, on all members at once:

  check    the snapshot's sha256 against the one recorded beside it; every controller reachable
  upload   the snapshot to each controller, sha256 checked there          undo: remove it
  stop     what uses etcd on the controllers (later chapters' services), then etcd everywhere
                                                                           undo: start them again
  restore  each member with its own --name and peer URL, the full --initial-cluster and a NEW
           cluster token, into <data_dir>.restoring-<time> (etcdctl on 3.4, etcdutl on 3.5+)
  swap     old data aside to <data_dir>.removed-<time>, the restored member in its place
                                                                           undo: swap back
  start    every member at once (Type=notify: one by one would hang)       undo: stop them
  check    one leader, every member started, the live key count at the snapshot's revision
           equals the one recorded when it was taken
  start    the services stopped before

Until the last check passes every step can be undone: a restore that fails, or Ctrl-C, puts the
old data dirs back and starts the old members, so the cluster is never worse than before.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from hardway import procedure, remote
from hardway.chapters import REGISTRY
from hardway.chapters.base import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd import datadir
from hardway.chapters.etcd.cluster import ClusterView, gather_view
from hardway.chapters.etcd.files import UNIT
from hardway.day2.snapshot import NODE_DIR, Snapshot, live_keys, load, parse_count
from hardway.errors import HardwayError
from hardway.facts import unit_states
from hardway.inventory import Node
from hardway.procedure import Procedure
from hardway.remote import Remote

POLL_S = 0.1


def dependents(ctx: Context, node: Node) -> tuple[str, ...]:
    """Services of the chapters after etcd's that run on ``node`` (the apiservers): they are stopped
    while etcd is restored, as etcd's and Kubernetes' restore procedures ask."""
    after = REGISTRY[REGISTRY.index(ETCD) + 1:]
    return tuple(u for ch in after if node in ch.targets(ctx.inv) for u in ch.units)


def _each(ctx: Context, work: Callable[[Remote], object], nodes: Sequence[Node] | None = None) -> None:
    """``work`` on every controller at once; the first failure (with a count of the others) is raised."""
    outcomes = remote.fan_out(ctx.inv, ctx.inv.controllers if nodes is None else nodes, work,
                              connector=ctx.connector)
    if (error := remote.first_error(outcomes)) is not None:
        raise HardwayError(error)


def _stream(path: Path) -> Callable[[BinaryIO], None]:
    def write(out: BinaryIO) -> None:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                out.write(chunk)

    return write


def plan(ctx: Context, path: Path, view: ClusterView | None = None) -> tuple[Procedure, Snapshot]:
    inv = ctx.inv
    snap = load(path)  # sha256 first: a damaged file never reaches a node
    view = view or gather_view(inv, ctx.connector, extra=lambda n: [unit_states(dependents(ctx, n))])
    if view.unreachable:
        names = ", ".join(v.node.name for v in view.unreachable)
        raise HardwayError(f"a restore rewrites every member, but {names} cannot be reached "
                           f"({view.unreachable[0].error}); start the machine or fix SSH, then re-run (nothing was "
                           "changed)")
    tools = {n.name: view[n.name].release.snapshot_tool(n.name) for n in inv.controllers}
    running = {n.name: tuple(u for u, st in view[n.name].extra.get(unit_states(dependents(ctx, n)).key, {}).items()
                             if st.active == "active") for n in inv.controllers}
    stamp = time.strftime("%Y%m%d%H%M%S")
    token = f"{inv.cluster_name}-restore-{stamp}"
    cluster = ",".join(f"{c.name}={inv.etcd_peer_url(c)}" for c in inv.controllers)
    d = inv.etcd.data_dir
    restoring, aside = f"{d}.restoring-{stamp}", datadir.removed_dir(d, stamp)
    on_node = f"{NODE_DIR}/restore-{snap.path.name}"
    q = shlex.quote(on_node)
    proc = Procedure(f"etcd.restore {snap.path.name}", ctx.progress)
    revision, keys = snap.meta.get("revision"), snap.meta.get("keys")
    proc.notes += [f"snapshot: revision {revision}, {keys} keys, sha256 {snap.sha256[:16]}… (checked)",
                   f"new cluster token {token}; tools: " + ", ".join(f"{n}: {t.split()[-1]}" for n, t in tools.items())]
    everyone = "every controller"

    def upload(r: Remote) -> None:
        r.feed(f"install -d -m 0700 {NODE_DIR} && umask 077 && cat > {q}.part && "
               f"echo {snap.sha256}'  '{q}.part | sha256sum -c --quiet && mv {q}.part {q}", _stream(snap.path),
               timeout=int(max(ctx.timeout, 300)))

    def on_all(command: Callable[[Node], str], nodes: Sequence[Node] | None = None) -> Callable[[], None]:
        return lambda: _each(ctx, lambda r: r.run(command(r.node), timeout=int(max(ctx.timeout, 300))), nodes)

    proc.add(everyone, f"upload the snapshot to {on_node} (sha256 checked on each node)",
             f"cat > {on_node} (from the jumpbox) && sha256sum -c", lambda: _each(ctx, upload),
             undo=on_all(lambda n: f"rm -f -- {q} {q}.part"), undo_text=f"rm -f {on_node}")
    users = {n: u for n, u in running.items() if u}
    if users:
        names = sorted({u for us in users.values() for u in us})
        targets = [inv.node(n) for n in users]
        proc.add(", ".join(users), f"stop what uses etcd: {', '.join(names)}",
                 "systemctl stop " + " ".join(names), on_all(lambda n: "systemctl stop " + " ".join(users[n.name]),
                                                             targets),
                 undo=on_all(lambda n: "systemctl start --no-block " + " ".join(users[n.name]), targets),
                 undo_text="systemctl start " + " ".join(names))

    def start_old() -> None:
        on_all(lambda n: f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl start --no-block {UNIT}")()
        _wait_serving(ctx, None)

    # followers first, then the leader: a leader stopped together with its followers waits out a
    # leadership transfer nobody can take (measured: 7 s); alone, with no follower left, it stops at once
    leader = next((v.node for v in view.in_cluster if view.leader and v.member_id == view.leader), None)
    followers = [n for n in inv.controllers if n != leader]

    def stop_all() -> None:
        on_all(lambda n: f"systemctl stop {UNIT}", followers)()
        if leader is not None:
            on_all(lambda n: f"systemctl stop {UNIT}", [leader])()

    proc.add(everyone, "stop etcd (the followers, then the leader)", f"systemctl stop {UNIT}", stop_all,
             undo=start_old, undo_text="invoke bootstrap-etcd")

    def restore_cmd(n: Node) -> str:
        return (f"{tools[n.name]} snapshot restore {q} --name {n.name} --initial-cluster {cluster} "
                f"--initial-cluster-token {token} --initial-advertise-peer-urls {inv.etcd_peer_url(n)} "
                f"--data-dir {restoring}")

    proc.add(everyone, f"restore it into {restoring}: each member with its own name and peer URL",
             restore_cmd(inv.controllers[0]).replace(inv.controllers[0].name, "<name>").replace(
                 inv.etcd_peer_url(inv.controllers[0]), "<peer URL>"), on_all(restore_cmd),
             undo=on_all(lambda n: f"rm -rf -- {restoring}"), undo_text=f"rm -rf {restoring}")
    swap = (f"mkdir -p -m 0700 {d} && {datadir.move_aside(d, stamp)} && mv {restoring}/member {d}/member && "
            f"rmdir {restoring} && rm -f -- {q}")  # the uploaded snapshot is done with
    unswap = (f"if [ -d {aside} ]; then mkdir -p {restoring} && {{ [ ! -d {d}/member ] || mv {d}/member "
              f"{restoring}/member; }} && {datadir.move_back(d, stamp)}; fi")
    proc.add(everyone, f"move the old data aside to {aside}, the restored member into {d} (the upload removed)", swap,
             on_all(lambda n: swap), undo=on_all(lambda n: unswap), undo_text=unswap)
    proc.add(everyone, "start every member at once", f"systemctl start --no-block {UNIT}",
             on_all(lambda n: f"systemctl reset-failed {UNIT} 2>/dev/null; systemctl start --no-block {UNIT}"),
             undo=on_all(lambda n: f"systemctl stop {UNIT}"), undo_text=f"systemctl stop {UNIT}")
    proc.add("-", "check: one leader, every member started" + (f", {keys} keys at revision {revision}"
                                                               if keys is not None else ""),
             live_keys(inv, inv.controllers[0], revision) if revision else "",
             lambda: _check(ctx, revision, keys))
    if users:
        proc.add(", ".join(users), "start again what uses etcd", "systemctl start " + " ".join(names),
                 on_all(lambda n: "systemctl start --no-block " + " ".join(users[n.name]), targets))
    return proc, snap


def _wait_serving(ctx: Context, want: int | None) -> ClusterView:
    """Until every controller serves one cluster with one leader (and, given ``want``, that many members)."""
    t0 = time.monotonic()
    view = None
    while time.monotonic() - t0 < ctx.timeout:
        view = gather_view(ctx.inv, ctx.connector, data=False, release=False)
        leaders = {v.leader for v in view.in_cluster}
        members = view.members or []
        if len(view.in_cluster) == len(ctx.inv.controllers) and len(leaders) == 1 and None not in leaders and \
                all(m.started for m in members) and (want is None or len(members) == want):
            return view
        procedure.sleep(POLL_S)
    up = ", ".join(v.node.name for v in (view.in_cluster if view else [])) or "none"
    raise HardwayError(f"the members did not all serve one cluster within {ctx.timeout:.0f}s (serving: {up})")


def _check(ctx: Context, revision: int | None, keys: int | None) -> None:
    view = _wait_serving(ctx, len(ctx.inv.controllers))
    if revision is None or keys is None:
        return
    node = view.in_cluster[0].node
    r = ctx.connector(ctx.inv, node)
    try:
        got = parse_count(r.run(live_keys(ctx.inv, node, int(revision))).stdout)
    finally:
        r.close()
    if got != keys:
        raise HardwayError(f"the restored cluster holds {got} keys at revision {revision}, the snapshot was "
                           f"recorded with {keys}")


def restore(ctx: Context, path: Path, *, dry_run: bool = False) -> tuple[Procedure, Snapshot, float]:
    proc, snap = plan(ctx, path)
    seconds = 0.0 if dry_run else proc.run()
    return proc, snap, seconds
