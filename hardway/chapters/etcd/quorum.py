"""The cluster-wide etcd results: membership, leadership, and whether a quorum serves writes.

Member IDs are not compared with hardway's bootstrap identity: after a replace (``member add``
assigns a random ID) or a restore (a new cluster token) they legitimately differ. Names and peer
URLs must match the inventory; whose data is stale is the data-dir check's business.
"""

from __future__ import annotations

from collections.abc import Mapping

from hardway.chapters.etcd.cluster import ClusterView, quorum
from hardway.checks import FAIL, OK, WARN, CheckResult
from hardway.inventory import Inventory

CHAPTER = "etcd"


def _result(check: str, status: str, detail: str, hint: str = "") -> CheckResult:
    return CheckResult(CHAPTER, check, "-", status, detail, hint)


def membership(inv: Inventory, view: ClusterView) -> CheckResult:
    members = view.members
    if members is None:
        return _result("members", FAIL, "no member answered `member list`",
                       "the cluster has no quorum; start the stopped members (`invoke bootstrap-etcd`)")
    want = {inv.etcd_peer_url(n): n.name for n in inv.controllers}
    problems = []
    for m in members:
        url = next((u for u in m.peer_urls if u in want), None)
        if url is None:
            problems.append(f"extra member {m.name or 'unstarted'} {m.hex} ({','.join(m.peer_urls)})")
        elif not m.started:
            problems.append(f"{want[url]} is added but never started (member {m.hex})")
        elif m.name != want[url]:
            problems.append(f"{url} is named {m.name}, not {want[url]}")
        elif m.learner:
            problems.append(f"{m.name} is a learner (not promoted)")
    listed = {u for m in members for u in m.peer_urls}
    problems += [f"{name} missing" for url, name in want.items() if url not in listed]
    if not problems:
        return _result("members", OK, f"member list = the inventory's {len(want)} controllers (names, peer URLs): "
                                      + ", ".join(f"{m.name} {m.hex}" for m in members))
    missing = [name for url, name in want.items() if url not in listed]
    hint = (f"`invoke bootstrap-etcd` joins {', '.join(missing)} as new member(s)" if missing and len(problems) ==
            len(missing) else "`invoke etcd.replace NODE` re-adds a member properly; remove a member that is not "
                              "in the inventory with `etcdctl member remove HEX`, or add it to the inventory")
    return _result("members", FAIL, "member list differs from the inventory: " + "; ".join(problems), hint)


def leadership(view: ClusterView) -> CheckResult:
    leaders = {v.leader for v in view.in_cluster if v.leader}
    answering = len(view.in_cluster)
    if len(leaders) == 1 and answering:
        leader = leaders.pop()
        return _result("leader", OK, f"exactly one leader: {view.name_of(leader)} ({answering} members agree)")
    return _result("leader", FAIL, f"{len(leaders)} leaders seen by {answering} serving members",
                   "no leader usually means no quorum or a disk too slow for elections (`sync duration` in the "
                   "journal)")


def quorum_and_writes(inv: Inventory, view: ClusterView, writes: Mapping[str, tuple[bool, str]]) -> CheckResult:
    """"2 of 3 members up, quorum kept, writes work": counted from the members, writes proven."""
    total = len(view.members) if view.members is not None else len(inv.controllers)
    up = [v.node.name for v in view.in_cluster]
    down = [n.name for n in inv.controllers if n.name not in up]
    kept = len(up) >= quorum(total)
    wrote = next((n for n in up if writes.get(n, (False, ""))[0]), None)
    if wrote:
        w = f"writes work (a hardway key written through {wrote})"
    elif not up:
        w = "writes not tried: no member serves"
    else:
        errors = [writes[n][1] for n in up if n in writes and writes[n][1]]
        w = "writes fail" + (f": {errors[0].splitlines()[-1][:120]}" if errors else "")
    detail = f"{len(up)} of {total} members up, quorum {'kept' if kept else 'lost'}, {w}"
    if kept and not down and wrote:
        return _result("quorum", OK, detail)
    start = "`invoke bootstrap-etcd` (starts stopped members and joins empty ones)"
    if kept and wrote:
        return _result("quorum", WARN, detail, f"not serving: {', '.join(down)}; {start}, or `invoke etcd.replace "
                                               "NODE` for a member whose data-dir result fails")
    return _result("quorum", FAIL, detail, f"not serving: {', '.join(down) or 'none'}; {start}; if a majority is "
                                           "gone for good, restore a snapshot: `invoke etcd.restore SNAPSHOT`")


def judge_cluster(inv: Inventory, view: ClusterView, writes: Mapping[str, tuple[bool, str]]) -> list[CheckResult]:
    return [membership(inv, view), leadership(view), quorum_and_writes(inv, view, writes)]
