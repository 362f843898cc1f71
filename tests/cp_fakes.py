"""Fact-level fakes of the control plane's nodes: an apiserver that answers /readyz once its unit runs,
and HAProxy's runtime API (``show stat``, ``set server ... state``, ``shutdown sessions``)."""

from __future__ import annotations

from hardway import pki
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane import probes
from hardway.facts import FactOutput
from hardway.inventory import Inventory
from tests.fakes import FakeCluster, FakeNode

STAT_HEADER = "# pxname,svname,qcur,qmax,scur,smax,status,check_status,check_desc"


def controller(node: FakeNode) -> None:
    """Answers like a controller's disk and etcd (its components answer the jumpbox: ``Jumpbox``)."""
    node.facts.update({
        "etcd_health": FactOutput("https://127.0.0.1:2379 is healthy", 0),
        "listener_units": "", "journal": "", "unit_lint": "",
        "apiserver_etcd_client": etcd_members_healthy,
        "audit_log": FactOutput("2540 1000 1004", 0),  # size, mtime, now: written 4 s ago
    })


def etcd_members_healthy(fact, _node) -> FactOutput:
    """Every member's /health answers the apiserver's etcd client."""
    return FactOutput("".join(f'{url} 0 {{"health":"true"}}\n' for url in fact.args), 0)


class Jumpbox:
    """What the jumpbox's TLS probes (control_plane.probes.get) see of a fake cluster: a component
    answers once its unit runs there (the apiserver after ``unready_polls`` polls); the endpoint
    answers while HAProxy runs and an apiserver is UP behind it. Each probe is an event on the node."""

    def __init__(self, cluster: FakeCluster, inv: Inventory, unready_polls: int = 0) -> None:
        self.cluster, self.inv = cluster, inv
        self.unready = {c.name: unready_polls for c in inv.controllers}
        self.sans = pki.spec_for(inv, "kube-apiserver").sans

    def get(self, host: str, port: int, path: str, *args: object, **kw: object) -> probes.Probe:
        where = f"{host}:{port}{path}"
        ep = self.inv.api_endpoint
        if host == str(ep.address) and port == ep.port and self.inv.loadbalancers:
            lb_node = self.cluster[self.inv.loadbalancers[0].name]
            svc = lb_node.services.get(lb.UNIT)
            if svc is None or not svc.active:
                return probes.Probe(probes.REFUSED, f"{where}: connection refused")
            if not any(self._runs(c.name, "kube-apiserver") for c in self.inv.controllers):
                return probes.Probe(probes.NO_TLS, f"{where}: accepted the connection but closed it before TLS")
            return probes.Probe(probes.OK, f"{where}: ok", 200, "ok", self.sans, standin=True)
        node = next(n for n in self.inv.nodes if str(n.address) == host)
        unit = {6443: "kube-apiserver", 10257: "kube-controller-manager", 10259: "kube-scheduler"}[port]
        self.cluster[node.name].event(f"probe {unit}")
        if not self._runs(node.name, unit):
            return probes.Probe(probes.REFUSED, f"{where}: connection refused (nothing listens there)")
        if unit == "kube-apiserver" and self.unready[node.name] > 0:
            self.unready[node.name] -= 1
            return probes.Probe(probes.HTTP, f"{where}: HTTP 500 (stand-in) not ready: etcd", 500)
        body = '{"gitVersion": "v1.32.3-hardway-standin"}' if path == "/version" else "ok"
        return probes.Probe(probes.OK, f"{where}: ok", 200, body, self.sans, standin=True)

    def _runs(self, node: str, unit: str) -> bool:
        svc = self.cluster[node].services.get(unit)
        return svc is not None and svc.active and not svc.failed


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


def see_through(monkeypatch, cluster: FakeCluster, inv: Inventory, unready_polls: int = 0) -> Jumpbox:
    """Make the jumpbox's TLS probes see ``cluster`` (a unit test must never dial the sample's addresses)."""
    jump = Jumpbox(cluster, inv, unready_polls)
    monkeypatch.setattr(probes, "get", jump.get)
    return jump
