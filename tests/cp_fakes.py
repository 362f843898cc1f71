"""Fact-level fakes of the control plane's nodes: an apiserver that answers /readyz once its unit runs,
and HAProxy's runtime API (``show stat``, ``set server ... state``, ``shutdown sessions``)."""

from __future__ import annotations

from hardway.chapters.control_plane import loadbalancer as lb
from hardway.facts import FactOutput
from hardway.inventory import Inventory
from tests.fakes import FakeCluster, FakeNode

STAT_HEADER = "# pxname,svname,qcur,qmax,scur,smax,status,check_status,check_desc"


def controller(node: FakeNode, unready_polls: int = 0) -> None:
    """Answers like a controller: etcd healthy; each component healthy once its unit runs (the
    apiserver after ``unready_polls`` polls)."""
    polls = {"n": 0}

    def running(unit: str):
        def answer(fact, n: FakeNode) -> FactOutput:
            svc = n.services.get(unit)
            if svc is None or not svc.active:
                return FactOutput("The connection to the server 127.0.0.1:6443 was refused", 1)
            if unit == "kube-apiserver":
                polls["n"] += 1
                if polls["n"] <= unready_polls:
                    return FactOutput("[-]etcd failed: not ready", 1)
            return FactOutput("ok", 0)
        return answer

    def component(fact, n: FakeNode) -> FactOutput:
        return running(fact.args[0])(fact, n)

    node.facts.update({
        "etcd_health": FactOutput("https://127.0.0.1:2379 is healthy", 0),
        "apiserver_readyz": running("kube-apiserver"),
        "component_healthz": component,
        "listener_units": "", "journal": "", "unit_lint": "", "curl": "/usr/bin/curl",
        "apiserver_etcd_client": FactOutput("is healthy", 0),
        "server_version": '{"serverVersion": {"gitVersion": "v1.32.3-hardway-standin"}}',  # apply's RBAC step
        "rbac_objects": FactOutput("the server could not find the requested resource", 1),
    })


class HAProxy:
    """The runtime API of one fake HAProxy: a server is UP when its controller's apiserver runs."""

    def __init__(self, cluster: FakeCluster, node: FakeNode, inv: Inventory) -> None:
        self.cluster, self.node, self.inv = cluster, node, inv
        self.admin: dict[str, str] = {c.name: "ready" for c in inv.controllers}
        self.sessions: dict[str, int] = dict.fromkeys(self.admin, 0)
        node.facts.update({"lb_stat": self.stat, "haproxy_version": "HAProxy version 2.6.12-1+deb12u4 2025/04/08",
                           "python3": "/usr/bin/python3", "listener_units": "", "journal": "", "unit_lint": "",
                           "haproxy_check": "Configuration file is valid"})
        node.on(r"set server kube-apiservers/", self.set_state)
        node.on(r"shutdown sessions server", lambda _c: "")

    def running(self) -> bool:
        svc = self.node.services.get(lb.UNIT)
        return svc is not None and svc.active

    def status(self, name: str) -> str:
        if self.admin[name] in ("maint", "drain"):
            return self.admin[name].upper()
        api = self.cluster[name].services.get("kube-apiserver")
        return "UP" if api is not None and api.active else "DOWN"

    def stat(self, fact, n: FakeNode) -> FactOutput:
        if not self.running():
            return FactOutput(f"no {lb.SOCKET}: {lb.UNIT} is not running", 3)
        rows = [STAT_HEADER, "kube-apiserver,FRONTEND,,,0,0,OPEN,,"]
        rows += [f"kube-apiservers,{s},0,0,{self.sessions[s]},0,{self.status(s)},L7OK,Layer7 check passed"
                 for s in self.admin]
        return FactOutput("\n".join(rows) + "\n", 0)

    def set_state(self, command: str) -> str:
        words = command.rsplit("'", 2)[-2].split() if "'" in command else command.split()
        server = next(w for w in words if w.startswith("kube-apiservers/")).split("/", 1)[1]
        self.admin[server] = words[-1]
        self.node.event(f"lb {server} {words[-1]}")
        return ""
