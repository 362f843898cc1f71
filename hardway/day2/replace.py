"""``invoke etcd.replace NODE``: give a controller a fresh etcd member without losing quorum.

For a member whose data dir is stale (``request cluster ID mismatch``), removed (``permanently
removed from the cluster``), lost (a replaced disk) or simply suspect. The procedure etcd documents:

  guard   count the members that serve besides NODE: they must be a quorum of the cluster with NODE's
          new member added (so never the last member, never with another member down in a 3-node cluster)
  leader  if NODE leads, hand leadership to a serving member first (no election while clients write)
  remove  member remove, by the ID listed at NODE's peer URL (JSON IDs are decimal, etcdctl wants hex)
  stop    etcd on NODE (a removed member has already exited: instant)
  aside   move its data to <data_dir>.removed-<time> (never deleted)
  join    member add (a learner on 3.5+), start with --initial-cluster-state=existing, wait until
          started and in sync (promote), steady-state unit back       (see chapters/etcd/membership)

The removal is the first change: Ctrl-C or a failure before it changes nothing; after it, the way
forward is to run the same command again (each step looks at what is there: a member already gone
is not removed twice, an empty data dir is not moved), and the message says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from hardway import binaries
from hardway.chapters.base import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd import apply as etcd_apply
from hardway.chapters.etcd import datadir, membership
from hardway.chapters.etcd.cluster import ClusterView, gather_view, quorum
from hardway.chapters.etcd.files import UNIT, ctl
from hardway.day2.common import controller, run_on
from hardway.errors import HardwayError
from hardway.procedure import Procedure

STOPPABLE = ("active", "activating", "reloading", "deactivating", "failed")


@dataclass
class Replacement:
    procedure: Procedure
    node: str
    aside: str | None  # where its data went, if it had any
    joined: membership.Joined
    seconds: float = 0.0

    def summary(self) -> str:
        member = f"{self.joined.member_id:x}" if self.joined.member_id else "?"
        moved = f"; old data in {self.aside}" if self.aside else ""
        again = " (restarted once: its first announcement was lost)" if self.joined.republished else ""
        return f"etcd.replace {self.node}: member {member} joined and in sync in {self.seconds:.1f}s{again}{moved}"


def guard(ctx: Context, view: ClusterView, name: str) -> tuple[int, int]:
    """Refuse what would lose quorum; returns (other serving members, needed)."""
    inv = ctx.inv
    node = controller(inv, name)
    target = view[name]
    if not target.reachable:
        raise HardwayError(f"{target.error}; etcd.replace works on the node itself (stop etcd, move its data "
                           "aside): start the machine or fix SSH, then re-run")
    members = view.members
    if members is None:
        raise HardwayError("no etcd member answers `member list` (no quorum): a replace needs a working majority; "
                           "start the stopped members (`invoke bootstrap-etcd`) or restore a snapshot "
                           "(`invoke etcd.restore SNAPSHOT`)")
    listed = view.member_at(inv.etcd_peer_url(node))
    known = {inv.etcd_peer_url(c) for c in inv.controllers}
    strangers = [m for m in members if m is not listed and not known & set(m.peer_urls)]
    if strangers:
        names = ", ".join(f"{m.name or 'unstarted'} {m.hex} ({','.join(m.peer_urls)})" for m in strangers)
        raise HardwayError(f"the etcd cluster has members that are not controllers in {inv.path}: {names}; remove "
                           "them (`etcdctl member remove HEX`) or add them to the inventory, then re-run")
    if listed is not None and len(members) == 1:
        raise HardwayError(f"{name} is the cluster's only etcd member: replacing it loses every key; take a "
                           "snapshot (`invoke etcd.snapshot`) and restore it (`invoke etcd.restore SNAPSHOT`)")
    serving = [v for v in view.serving if v.node.name != name]
    after = len(members) if listed is not None else len(members) + 1
    need = quorum(after)
    if len(serving) < need:
        up = ", ".join(v.node.name for v in serving) or "none"
        raise HardwayError(f"replacing {name} would lose quorum: {len(serving)} other member(s) serve ({up}) but "
                           f"{need} of {after} are needed while {name} rejoins; start the stopped members first "
                           "(`invoke bootstrap-etcd`), then re-run")
    return len(serving), need


def plan(ctx: Context, name: str, view: ClusterView | None = None) -> Replacement:
    """The replace procedure for controller ``name``, from what the cluster looks like now (read-only)."""
    inv = ctx.inv
    node = controller(inv, name)
    view = view or gather_view(inv, ctx.connector)
    serving, need = guard(ctx, view, name)
    target = view[name]
    if ctx.cache_dir is not None:  # binaries from URLs: fetched (sha256-checked) before anything changes
        for b in ETCD.binaries:
            if b in inv.binaries:
                binaries.fetch(inv.binaries[b], ctx.cache_dir)
    files = ctx.files(ETCD, node)  # the member's certificates and binaries too: a replaced disk has none
    stamp = time.strftime("%Y%m%d%H%M%S")
    finish = f"invoke etcd.replace {name}"
    proc = Procedure(f"etcd.replace {name}", ctx.progress)
    release = view.release()
    proc.notes += [f"quorum kept: {serving} other member(s) serve, {need} needed",
                   f"etcd {release.dotted}: the new member joins "
                   + ("as a learner, then is promoted" if release.learners else "as a voting member (3.4: no learner)")]
    if target.healthy and target.member_id is not None and view.leader == target.member_id:
        to = next(v for v in view.in_cluster if v.node.name != name and v.member_id is not None)
        lead = ctl(inv, node, f"move-leader {to.member_id:x}")
        proc.add(name, f"hand leadership to {to.node.name} (no election while clients write)", lead,
                 partial(run_on, ctx, node, lead))
    aside = None
    if not target.data.empty:
        aside = datadir.removed_dir(inv.etcd.data_dir, stamp)

    def stop_and_move() -> None:
        """After its member is removed: a running member exits by itself, so the stop is instant (a
        graceful stop of a member still listed waits a second for its peers' streams)."""
        if target.active in STOPPABLE:
            proc.add(name, "stop etcd", f"systemctl stop {UNIT}", partial(run_on, ctx, node, f"systemctl stop {UNIT}"),
                     final=finish)
        if aside is not None:
            move = datadir.move_aside(inv.etcd.data_dir, stamp)
            proc.add(name, f"move its data aside to {aside} (never deleted)", move, partial(run_on, ctx, node, move),
                     final=finish)

    joined = membership.add_join_steps(proc, ctx, view, node, files, finish, after_remove=stop_and_move)
    proc.add("-", "wait until every member names the same leader", "",
             partial(etcd_apply.wait_one_leader, ctx, inv.controllers))
    return Replacement(proc, name, aside, joined)


def replace(ctx: Context, name: str, *, dry_run: bool = False) -> Replacement:
    r = plan(ctx, name)
    if not dry_run:
        r.seconds = r.procedure.run()
    return r
