"""The etcd cluster as its members see it: one gather per controller, judged by pure code.

etcdctl is asked only where the unit is active (``guarded``), with short timeouts: a stopped member
costs nothing, so a degraded cluster is described in about a second instead of waiting out client
timeouts. Member IDs arrive as decimal numbers in JSON; etcdctl takes them in hex (``Member.hex``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hardway import remote
from hardway.chapters.etcd import datadir
from hardway.chapters.etcd.files import UNIT, ctl
from hardway.chapters.etcd.tools import RELEASE, EtcdRelease
from hardway.facts import Fact, FactOutput, gather, unit_states
from hardway.inventory import Inventory, Node
from hardway.remote import Connector

NOT_ASKED = 3  # a guarded fact's exit code when the unit is not active


def guarded(command: str) -> str:
    """Run ``command`` only if etcd's unit is active; else say so (exit 3) at once."""
    return (f"s=$(systemctl is-active {UNIT}); [ \"$s\" = active ] || {{ echo \"not asked: etcd is $s\"; "
            f"exit {NOT_ASKED}; }}; {command}")


def quick_ctl(inv: Inventory, node: Node, args: str, endpoints: str | None = None) -> str:
    """etcdctl with timeouts short enough for a check (a dead peer costs a second, not five)."""
    return ctl(inv, node, args, endpoints, timeout="2s", dial="1s")


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


def json_answer(out: FactOutput) -> object | None:
    """etcdctl's -w json answer is one line; stderr (merged) may carry zap log lines before it."""
    if not out.ok:
        return None
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, list) or (isinstance(doc, dict) and "level" not in doc):
            return doc
    return None


def health(inv: Inventory, node: Node) -> Fact[tuple[bool, str]]:
    """`endpoint health` against the member itself: a linearizable read, so quorum too."""
    return Fact("etcd_health", guarded(quick_ctl(inv, node, "endpoint health")), _answer, (node.name,))


def status(inv: Inventory, node: Node) -> Fact[object | None]:
    return Fact("etcd_status", guarded(quick_ctl(inv, node, "endpoint status -w json")), json_answer, (node.name,))


def members(inv: Inventory, node: Node) -> Fact[object | None]:
    return Fact("etcd_members", guarded(quick_ctl(inv, node, "member list -w json")), json_answer, (node.name,))


STATE = unit_states((UNIT,))


def facts(inv: Inventory, node: Node, *, data: bool = True, release: bool = True) -> list[Fact]:
    """What one controller says about itself and the cluster, for one gather (without its data dir's
    identity or its etcd release when the caller needs neither: a poll)."""
    return [STATE, health(inv, node), status(inv, node), members(inv, node), *([RELEASE] if release else []),
            *(datadir.facts(inv) if data else [])]


# --- the view ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    id: int
    name: str  # "" while added but not started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    learner: bool = False

    @property
    def hex(self) -> str:
        return f"{self.id:x}"

    @property
    def started(self) -> bool:
        return bool(self.name)


def parse_members(doc: object) -> list[Member] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        return None
    return [Member(int(m["ID"]), m.get("name", ""), tuple(m.get("peerURLs") or ()), tuple(m.get("clientURLs") or ()),
                   bool(m.get("isLearner", False))) for m in doc["members"]]


@dataclass
class MemberView:
    """One controller: its unit, its own member's answers, its data dir, its etcd release."""

    node: Node
    active: str = "unknown"
    healthy: bool = False
    health: str = ""
    status: dict | None = None  # `endpoint status` Status: leader, raftIndex, header.cluster_id, ...
    members: list[Member] | None = None
    release: EtcdRelease = field(default_factory=lambda: EtcdRelease(None))
    data: datadir.DataDir = field(default_factory=datadir.DataDir)
    error: str | None = None  # the node could not be asked at all
    extra: dict = field(default_factory=dict)  # gather_view's extra facts, by Fact.key

    @property
    def reachable(self) -> bool:
        return self.error is None

    def _header(self, key: str) -> int | None:
        header = (self.status or {}).get("header") or {}
        return int(header[key]) if key in header else None

    @property
    def cluster_id(self) -> int | None:
        return self._header("cluster_id")

    @property
    def member_id(self) -> int | None:
        return self._header("member_id")

    @property
    def leader(self) -> int | None:
        leader = (self.status or {}).get("leader")
        return int(leader) if leader else None


def view_from(inv: Inventory, node: Node, values: Mapping) -> MemberView:
    """Pure: a MemberView from a gather of ``facts(inv, node)``."""
    st = values[status(inv, node)]
    healthy, text = values[health(inv, node)]
    entries, _ = datadir.facts(inv)
    return MemberView(
        node=node, active=values[STATE][UNIT].active, healthy=healthy, health=text,
        status=st[0].get("Status") if isinstance(st, list) and st and isinstance(st[0], dict) else None,
        members=parse_members(values[members(inv, node)]),
        release=values[RELEASE] if RELEASE in values else EtcdRelease(None),
        data=datadir.read(values, inv) if entries in values else datadir.DataDir())


def quorum(members: int) -> int:
    return members // 2 + 1


@dataclass
class ClusterView:
    inv: Inventory
    views: dict[str, MemberView]

    def __getitem__(self, name: str) -> MemberView:
        return self.views[name]

    @property
    def serving(self) -> list[MemberView]:
        """Members that answered a linearizable read (so they are in a quorum of some cluster)."""
        return [v for v in self.views.values() if v.healthy]

    @property
    def cluster_id(self) -> int | None:
        """The cluster most serving members are in (a stale member may serve a cluster of its own)."""
        seen = Counter(v.cluster_id for v in self.serving if v.cluster_id is not None)
        return seen.most_common(1)[0][0] if seen else None

    @property
    def in_cluster(self) -> list[MemberView]:
        """Serving members of this cluster."""
        cid = self.cluster_id
        return [v for v in self.serving if v.cluster_id in (cid, None)]

    @property
    def unreachable(self) -> list[MemberView]:
        return [v for v in self.views.values() if not v.reachable]

    @property
    def members(self) -> list[Member] | None:
        """The member list as this cluster's serving members say it, else as any member says it."""
        best = next((v for v in self.in_cluster if v.members is not None), None) or \
            next((v for v in self.views.values() if v.members is not None), None)
        return best.members if best else None

    @property
    def leader(self) -> int | None:
        return next((v.leader for v in self.in_cluster if v.leader), None)

    def member_at(self, peer_url: str) -> Member | None:
        return next((m for m in self.members or () if peer_url in m.peer_urls), None)

    def name_of(self, member_id: int) -> str:
        m = next((m for m in self.members or () if m.id == member_id), None)
        return (m.name or f"unstarted {m.hex}") if m else f"{member_id:x}"

    def reference(self) -> datadir.Reference:
        serving = bool(self.in_cluster)
        listed = {url: m.id for m in self.members or () for url in m.peer_urls} if serving else None
        return datadir.reference(self.inv, {n: v.data for n, v in self.views.items() if v.reachable},
                                 self.cluster_id, listed)

    def verdicts(self) -> dict[str, datadir.Verdict]:
        return datadir.judge(self.inv, {n: v.data for n, v in self.views.items() if v.reachable}, self.reference())

    def release(self) -> EtcdRelease:
        """The release the members run (the first known one)."""
        return next((v.release for v in self.views.values() if v.release.known), EtcdRelease(None))


def gather_view(inv: Inventory, connector: Connector, nodes: Sequence[Node] | None = None,
                extra: Callable[[Node], Sequence[Fact]] | None = None, *, data: bool = True,
                release: bool = True) -> ClusterView:
    """Ask every controller at once (and on each, its etcdctl calls at once); unreachable ones are
    views with ``error`` set. ``extra``: more facts per node for the same round trip, their values
    kept in ``MemberView.extra``."""
    nodes = inv.controllers if nodes is None else nodes

    def ask(r: remote.Remote) -> MemberView:
        more = list(extra(r.node)) if extra else []
        values = gather(r, [*facts(inv, r.node, data=data, release=release), *more], timeout=30, parallel=True)
        view = view_from(inv, r.node, values)
        view.extra = {f.key: values[f] for f in more}
        return view

    views = {}
    for o in remote.fan_out(inv, nodes, ask, connector=connector):
        views[o.node.name] = o.value if o.ok and o.value is not None else MemberView(o.node, error=o.error)
    return ClusterView(inv, views)
