"""Joining a controller to a running etcd cluster as a new member: the procedure etcd documents.

``member remove`` (its old entry, if listed) -> ``member add`` (as a learner where the release
supports it) -> start it with ``--initial-cluster-state=existing`` and the cluster's real member
list -> wait until it is started and in sync (promote a learner) -> put the steady-state unit back.

Used by ``etcd.replace`` (after it stops the member and moves its data aside) and by
``bootstrap-etcd`` for a controller with an empty data dir while the others serve (a reset node,
a replaced disk): a member never restarts on a stale dir and never rejoins with an empty one
under its old identity.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable, Sequence
from functools import partial

from hardway import deploy, procedure
from hardway.chapters.base import Context
from hardway.chapters.etcd.cluster import STATE, ClusterView, Member, health, quick_ctl
from hardway.chapters.etcd.files import UNIT, UNIT_PATH, ctl, etcd_argv
from hardway.errors import HardwayError
from hardway.facts import gather, journal_since_start
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.planner import Planner
from hardway.procedure import Procedure

POLL_S = 0.2
# A joining member announces itself (etcd's "publish") as soon as it starts; on 3.4 that proposal is
# lost when it goes out before the member knows where its peers are (they arrive with the leader's
# snapshot), and etcd retries only after its request timeout (5 s + 2 election timeouts): measured
# here, 2 joins in 6 waited 7 s ("failed to publish local member to cluster through raft"). When the
# member's journal shows its peer connections up but no announcement this long after, it is
# restarted once: a plain restart announces at once. (Judged by its journal, not by a clock: a slow
# but healthy join on a loaded machine is never restarted.)
PUBLISH_GRACE_S = 0.6
PEERS_UP, PUBLISHED = "initialized peer connections", "published local member to cluster"


def initial_cluster(inv: Inventory, members: Sequence[Member], joining: Node) -> str:
    """``--initial-cluster`` for a member joining ``members``: every member by name and peer URL, the
    joining one included (an unstarted member has no name yet: the inventory's, by its peer URL)."""
    by_url = {inv.etcd_peer_url(n): n.name for n in inv.controllers}
    pairs = [(m.name or by_url.get(m.peer_urls[0], m.hex), m.peer_urls[0]) for m in members if m.peer_urls]
    if not any(url == inv.etcd_peer_url(joining) for _, url in pairs):
        pairs.append((joining.name, inv.etcd_peer_url(joining)))
    return ",".join(f"{name}={url}" for name, url in pairs)


def join_argv(inv: Inventory, node: Node, cluster: str) -> list[str]:
    """The steady-state argv with the cluster it joins and ``--initial-cluster-state=existing``."""
    out = []
    for word in etcd_argv(inv, node):
        if word.startswith("--initial-cluster="):
            word = f"--initial-cluster={cluster}"
        elif word.startswith("--initial-cluster-state="):
            word = "--initial-cluster-state=existing"
        out.append(word)
    return out


def with_unit(ctx: Context, node: Node, files: Sequence[File], argv: list[str]) -> list[File]:
    """``files`` with the etcd unit rendered from ``argv`` instead of the steady one."""
    steady = next(f for f in files if f.path == UNIT_PATH)
    p = Planner(ctx.inv, node, ctx.state, None, chapter=steady.chapter)
    p.unit(UNIT, argv)
    return [p.files[0] if f.path == UNIT_PATH else f for f in files]


def _changed_flags(old: list[str], new: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in new if w not in old)


@dataclasses.dataclass
class Joined:
    """Filled in while the procedure runs."""

    member_id: int | None = None
    promoted: bool = False
    republished: bool = False  # restarted once to repeat a lost "publish" (see PUBLISH_GRACE_S)
    seconds: float = 0.0


def add_join_steps(proc: Procedure, ctx: Context, view: ClusterView, node: Node, files: Sequence[File],
                   finish: str, after_remove: Callable[[], None] | None = None) -> Joined:
    """Append the join of ``node`` to ``proc``. ``view`` must have a serving member besides ``node``;
    ``files`` are the etcd chapter's planned files for ``node`` (pushed with the joining unit, then
    with the steady one); ``finish`` is the command that completes an interrupted join;
    ``after_remove`` appends steps between the removal of the old member and the add (replace: stop
    it, move its data aside — a removed member exits at once, so the stop is instant)."""
    inv = ctx.inv
    serving = [v for v in view.in_cluster if v.node.name != node.name]
    if not serving:
        raise HardwayError(f"{node.name} cannot join: no other etcd member serves")
    via = next((v for v in serving if v.member_id != view.leader), serving[0]).node
    endpoints = ",".join(inv.etcd_client_url(v.node) for v in serving)
    url = inv.etcd_peer_url(node)
    learner = view.release().learners
    old = view.member_at(url)
    joined = Joined()

    if old is not None:
        remove = ctl(inv, via, f"member remove {old.hex}", endpoints)
        proc.add(via.name, f"member remove {old.hex} ({node.name}'s old member, by its peer URL {url})", remove,
                 partial(_reconfigure, ctx, via, remove, f"member remove {old.hex}"), final=finish)
    if after_remove is not None:
        after_remove()
    after = [m for m in view.members or () if m is not old]
    add = ctl(inv, via, f"member add {node.name} --peer-urls={url}{' --learner' if learner else ''} -w json",
              endpoints)

    def do_add() -> None:
        out = _reconfigure(ctx, via, add, f"member add {node.name}")
        doc = next((json.loads(line) for line in reversed(out.splitlines()) if line.startswith("{")), {})
        joined.member_id = int(doc.get("member", {}).get("ID", 0)) or None

    proc.add(via.name, f"member add {node.name}" + (" as a learner" if learner else ""), add, do_add, final=finish)
    argv = join_argv(inv, node, initial_cluster(inv, after, node))
    joining = with_unit(ctx, node, files, argv)
    start = ["systemctl daemon-reload", f"systemctl enable --quiet {UNIT}",
             f"systemctl reset-failed {UNIT} 2>/dev/null || true", f"systemctl start --no-block {UNIT}"]

    def install(planned: Sequence[File], then: list[str]) -> None:
        r = ctx.connector(inv, node)
        try:
            deploy.install(r, planned, adopt=ctx.adopt, then=then)
        finally:
            r.close()

    proc.add(node.name, "start it with --initial-cluster-state=existing and the cluster's member list",
             f"(unit {UNIT_PATH} with {_changed_flags(etcd_argv(inv, node), argv)})\n" + "; ".join(start),
             partial(install, joining, start), undo=partial(install, files, ["systemctl daemon-reload"]),
             undo_text=finish, final=finish)
    promote = ctl(inv, via, "member promote <new member id>", endpoints)
    proc.add(node.name, "wait until it is started and in sync" + (" (promote the learner)" if learner else ""),
             promote if learner else quick_ctl(inv, node, "endpoint health"),
             partial(_wait_joined, ctx, via, node, endpoints, learner, joined), final=finish)
    proc.add(node.name, "put the steady-state unit back (the running member keeps its flags)",
             f"(unit {UNIT_PATH} as `invoke render` writes it); systemctl daemon-reload",
             partial(install, [f for f in files if f.path == UNIT_PATH], ["systemctl daemon-reload"]))
    return joined


# etcd refuses a membership change until every started member has been connected for a few seconds
# (--strict-reconfig-check): right after members start, "unhealthy cluster" means "ask again shortly".
_NOT_YET = ("unhealthy cluster", "not enough started members", "re-configuration failed")


def _reconfigure(ctx: Context, via: Node, command: str, what: str) -> str:
    """Run a member add/remove on ``via``, retrying while etcd says the cluster is not ready for it."""
    t0 = time.monotonic()
    r = ctx.connector(ctx.inv, via)
    try:
        while True:
            out = r.run(command, check=False, timeout=int(ctx.timeout))
            said = (out.stdout + out.stderr).strip()
            if out.ok:
                return out.stdout
            if not any(s in said for s in _NOT_YET) or time.monotonic() - t0 > ctx.timeout:
                last = (said.splitlines() or ["no output"])[-1]
                raise HardwayError(f"{via.name}: etcdctl {what}: {last}")
            procedure.sleep(0.5)
    finally:
        r.close()


def _wait_joined(ctx: Context, via: Node, node: Node, endpoints: str, learner: bool, joined: Joined) -> None:
    inv = ctx.inv
    t0 = time.monotonic()
    r, rv = ctx.connector(inv, node), ctx.connector(inv, via)
    own = health(inv, node)
    last = ""
    peers_up: float | None = None  # when its journal first showed its peer connections up
    try:
        while time.monotonic() - t0 < ctx.timeout:
            if learner and not joined.promoted and joined.member_id is not None:
                out = rv.run(ctl(inv, via, f"member promote {joined.member_id:x}", endpoints), check=False)
                joined.promoted = out.ok
                if not out.ok:  # "can only promote a learner member which is in sync with leader"
                    last = ((out.stdout + out.stderr).strip().splitlines() or [last])[-1]
            values = gather(r, [STATE, own])
            state = values[STATE][UNIT].active
            if state == "failed":
                journal = gather(r, [journal_since_start(UNIT, 40)])[journal_since_start(UNIT, 40)]
                tail = next((ln for ln in reversed(journal.splitlines()) if "error" in ln.lower()), "")
                said = tail.strip()[:200] or "see `journalctl -u etcd` there"
                raise HardwayError(f"{node.name}: etcd failed while joining ({said})")
            ok, text = values[own]
            if ok and (joined.promoted or not learner):
                joined.seconds = time.monotonic() - t0
                return
            last = (text.splitlines() or [last])[-1]
            if state == "activating" and not joined.republished:
                said = gather(r, [journal_since_start(UNIT, 400)])[journal_since_start(UNIT, 400)]
                if PEERS_UP in said and PUBLISHED not in said:
                    peers_up = peers_up or time.monotonic()
                    if time.monotonic() - peers_up > PUBLISH_GRACE_S:
                        r.run(f"systemctl restart --no-block {UNIT}")
                        joined.republished = True
            procedure.sleep(POLL_S)
    finally:
        r.close()
        rv.close()
    raise HardwayError(f"{node.name}: not started and in sync after {ctx.timeout:.0f}s ({last[:160]})")
