"""The pod-routes chapter: route planning on recorded routing tables, and apply over the fake (routes
added and removed from facts, a conflict on any node changes nothing anywhere, re-runs are idle).
The same chapter runs on real routing tables in tests/test_bootstrap_workers.py (lab)."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters import Context
from hardway.chapters import pod_routes as pr
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.fakes import FakeCluster
from tests.workers_fakes import recorded

ROOT = Path(__file__).resolve().parent.parent
LAB = inventory.load(ROOT / "inventory" / "lab.yaml")


def lab_routes(case: str) -> list[pr.Present]:
    """Recorded on lab wkx1 (10.78.41.0/24): the same shape as the shipped lab's 10.77.0.0/24."""
    text = recorded("routes", case).stdout.replace("10.78.41.", "10.77.0.")
    return pr.ROUTES.parse(dataclasses.replace(recorded("routes", case), stdout=text))


def test_wanted_routes_are_the_other_workers_pod_subnets_via_their_addresses() -> None:
    w0, w1 = LAB.workers
    assert pr.wanted(LAB, w0) == [pr.Route(w1.pod_cidr, w1.address, "worker-1")]
    assert [str(r.dst) for r in pr.wanted(LAB, LAB.controllers[0])] == ["10.200.0.0/24", "10.200.1.0/24"]
    assert [n.name for n in pr.nodes_routed(LAB)] == [n.name for n in LAB.nodes if not n.is_loadbalancer]


def test_a_routed_node_needs_nothing() -> None:
    plan = pr.plan_routes(pr.wanted(LAB, LAB.workers[0]), lab_routes("worker-0-routed"))
    assert (plan.add, plan.remove, plan.conflicts) == ([], [], []) and len(plan.kept) == 1
    assert pr.steps(plan, enabled=True) == []


def test_a_foreign_route_to_a_pod_subnet_is_a_conflict_never_replaced() -> None:
    plan = pr.plan_routes(pr.wanted(LAB, LAB.workers[0]), lab_routes("worker-0-foreign"))
    assert plan.add == [] and plan.remove == []
    (c,) = plan.conflicts
    assert c.startswith("a route 10.200.1.0/24 via 10.77.0.10 (proto boot) already exists; hardway would route "
                        "10.200.1.0/24 (worker-1's pods) via 10.77.0.21. Remove it (`ip route del 10.200.1.0/24`)")


def test_hardways_routes_to_workers_that_left_are_removed_and_new_ones_added() -> None:
    fewer = dataclasses.replace(LAB, nodes=tuple(n for n in LAB.nodes if n.name != "worker-1"))
    plan = pr.plan_routes(pr.wanted(fewer, fewer.controllers[0]), lab_routes("controller-0-routed"))
    assert [p.dst for p in plan.remove] == ["10.200.1.0/24"] and plan.add == []
    assert [s.command for s in pr.steps(plan, enabled=True)] == ["ip route del 10.200.1.0/24 via 10.77.0.21 proto 211"]
    w2 = inventory.Node("worker-2", ipaddress.ip_address("10.77.0.22"), frozenset({"worker"}),
                        ipaddress.ip_network("10.200.2.0/24"))
    more = dataclasses.replace(LAB, nodes=(*LAB.nodes, w2))
    plan = pr.plan_routes(pr.wanted(more, more.workers[0]), lab_routes("worker-0-routed"))
    assert [r.add() for r in plan.add] == ["ip route add 10.200.2.0/24 via 10.77.0.22 proto 211"]


def test_a_route_of_ours_to_a_moved_worker_is_replaced() -> None:
    moved = [dataclasses.replace(p, gateway="10.77.0.99") if p.ours else p for p in lab_routes("worker-0-routed")]
    plan = pr.plan_routes(pr.wanted(LAB, LAB.workers[0]), moved)
    assert [p.gateway for p in plan.remove] == ["10.77.0.99"] and [str(r.via) for r in plan.add] == ["10.77.0.21"]


def test_a_gateway_not_on_the_link_is_refused() -> None:
    direct = pr.reachability(["10.77.0.21"]).parse(recorded("route_get", "unreachable"))
    assert direct == {"10.9.9.9": "unreachable"}
    findings = pr.judge(LAB, LAB.workers[0], lab_routes("worker-0-routed"), {"10.77.0.21": "unreachable"})
    assert findings and "needs the nodes on one link" in findings[0].message
    on_link = pr.reachability(["10.78.41.21"]).parse(recorded("route_get", "on-link"))
    assert on_link == {"10.78.41.21": None}


# --- apply over the fake ------------------------------------------------------------------------


def routed_cluster(inv) -> FakeCluster:
    """Each node's routing table follows the `ip route` commands it is sent."""
    cluster = FakeCluster()
    for n in pr.nodes_routed(inv):
        node = cluster[n.name]
        table: list[dict] = [{"dst": "10.77.0.0/24", "dev": "eth0", "protocol": "kernel"}]
        node.table = table  # type: ignore[attr-defined]

        def routes(fact, fake, table=table) -> str:
            import json

            extra = []
            for cmd in fake.events:
                words = cmd.split()
                if words[:3] == ["ip", "route", "add"]:
                    extra.append({"dst": words[3], "gateway": words[5], "dev": "eth0", "protocol": words[7]})
                elif words[:3] == ["ip", "route", "del"]:
                    extra = [r for r in extra if r["dst"] != words[3]]
            return json.dumps(table + extra) + "\n\n[]\n"

        node.facts["routes"] = routes
        node.facts["route_get"] = lambda fact, fake: "".join(f'{a} [{{"dst":"{a}","dev":"eth0"}}]\n'
                                                             for a in fact.args)
    return cluster


def apply(inv, cluster, **kw):
    from hardway.state import PkiState

    return pr.CHAPTER.apply(Context(inv, PkiState(Path("/nonexistent")), connector=cluster.connector,
                                    progress=QUIET, **kw))


@pytest.fixture
def no_checks(monkeypatch):
    monkeypatch.setattr(pr.PodRoutesChapter, "verify", lambda self, ctx: [])


def test_apply_adds_every_route_enables_the_boot_unit_and_a_rerun_does_nothing(no_checks) -> None:
    cluster = routed_cluster(LAB)
    report = apply(LAB, cluster)
    assert report.steps["worker-0"] == ["route 10.200.1.0/24 via 10.77.0.21 added",
                                        "hardway-pod-routes enabled (the routes come back at boot)"]
    assert len(report.steps["controller-0"]) == 3
    unit = cluster["worker-0"].files[pr.UNIT_PATH].data.decode()
    assert "ExecStart=-/usr/sbin/ip \\\n  route \\\n  add \\\n  10.200.1.0/24 \\\n  via \\\n  10.77.0.21" in unit
    assert "10.200.0.0/24" not in unit  # never a route to its own pods
    for node in cluster.nodes.values():
        node.commands.clear()
    again = apply(LAB, cluster)
    assert again.steps == {} and again.summary() == "pod-routes: nothing changed: 0 files written, 0 restarts"
    assert all(node.commands == [] for node in cluster.nodes.values())


def test_a_conflict_on_one_node_changes_nothing_on_any(no_checks) -> None:
    cluster = routed_cluster(LAB)
    cluster["worker-0"].table.append({"dst": "10.200.1.0/24", "gateway": "10.77.0.10", "dev": "eth0"})
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: worker-0: a route 10.200.1.0/24 "
                                           r"via 10.77.0.10 \(proto boot\) already exists"):
        apply(LAB, cluster)
    for node in cluster.nodes.values():
        assert node.commands == [] and node.uploads == []


def test_reset_clears_only_hardways_routes_and_the_boot_unit() -> None:
    assert pr.clear_commands() == ["ip -4 route flush proto 211", "ip -6 route flush proto 211",
                                   "systemctl disable --quiet hardway-pod-routes 2>/dev/null || true"]
