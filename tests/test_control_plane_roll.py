"""The API endpoint moves: rotate-certs rolls the apiservers behind the real HAProxy while a client polls
/readyz through it, and the client sees no failure; the served certificate then names the new address
and not the old one. A lab of its own: 3 controllers and the load balancer.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from hardway import inventory, jumpbox, rotate
from hardway.chapters import Context
from hardway.chapters.control_plane import CHAPTER as CP
from hardway.chapters.control_plane import probes
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.checks import FAIL
from hardway.remote import QUIET, Progress
from hardway.state import PkiState

pytestmark = pytest.mark.lab


class Poller(threading.Thread):
    """GET /readyz through the endpoint, a new TLS connection each time (a client's worst case: every
    request is a new connection HAProxy must place), with the admin certificate, until stopped."""

    def __init__(self, host: str, port: int, state: PkiState) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.ctx = ssl.create_default_context(cafile=str(state.cert("ca")))
        self.ctx.check_hostname = False  # the certificate changes under it: names are checked afterwards
        self.ctx.load_cert_chain(str(state.cert("admin")), str(state.key("admin")))
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def poll(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=5) as raw, \
                self.ctx.wrap_socket(raw) as tls:
            tls.sendall(f"GET /readyz HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
        status = data.split(b"\r\n", 1)[0]
        if not status.endswith(b" 200 OK"):
            raise OSError(f"answered {status.decode(errors='replace')}")

    def run(self) -> None:
        while not self.stop.is_set() and self.ok + len(self.failures) < 100_000:
            try:
                self.poll()
                self.ok += 1
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} "
                                     f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)


def control_plane_lab(lab_factory, tmp_path_factory, name: str):  # -> (Lab, PkiState)
    """A lab of its own (3 controllers + lb-0) with etcd and the control plane up and verified."""
    the_lab = lab_factory(3, 0, loadbalancers=1)
    state = PkiState(tmp_path_factory.mktemp("pki") / name)
    jumpbox.generate(the_lab.inventory, state)
    ETCD.apply(Context(the_lab.inventory, state, progress=QUIET))
    report = CP.apply(Context(the_lab.inventory, state, progress=QUIET))
    assert not [r for r in report.results if r.status == FAIL]
    return the_lab, state


@pytest.fixture(scope="module")
def roll_lab(lab_factory, tmp_path_factory):
    return control_plane_lab(lab_factory, tmp_path_factory, "roll")


def test_the_endpoint_moves_and_a_polling_client_sees_no_failure(roll_lab, tmp_path: Path) -> None:
    from tests.test_bootstrap_etcd import run_on

    the_lab, state = roll_lab
    inv = the_lab.inventory
    lb_node = inv.loadbalancers[0]
    old = str(inv.api_endpoint.address)
    new = old.rsplit(".", 1)[0] + ".6"
    # the user gives the load balancer its new address (a new VIP, say): inside the lab's own netns
    import subprocess

    subprocess.run(["ip", "-n", the_lab.layout.netns(lb_node.name), "addr", "add", f"{new}/24", "dev", "eth0"],
                   check=True)
    moved_path = tmp_path / "inventory.yaml"
    moved_path.write_text(the_lab.inventory_path.read_text() + f"\napi_endpoint: {{address: {new}}}\n")
    moved = inventory.load(moved_path)
    seen = probes.get(new, 6443, "/readyz", state.cert("ca"), (state.cert("admin"), state.key("admin")))
    assert seen.kind == probes.NAME and f"not {new}" in seen.detail, "before: the stale certificate, by name"

    said: list[str] = []
    poller = Poller(new, 6443, state)
    poller.start()
    try:
        time.sleep(1.0)
        report = rotate.rotate(moved, state, progress=Progress(
            lambda line: said.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {line}")))
        time.sleep(1.0)
    finally:
        poller.stop.set()
        poller.join(timeout=30)
    restarted = [(svc, node) for svc, node in report.restarted if svc == "kube-apiserver"]
    assert restarted == [("kube-apiserver", c.name) for c in inv.controllers], report.restarted
    assert poller.failures == [], f"{len(poller.failures)} failed polls of {poller.ok + len(poller.failures)}: " \
                                  f"{poller.failures[:5]}; the roll: {said}"
    assert poller.ok > 100, poller.ok
    after = probes.get(new, 6443, "/readyz", state.cert("ca"), (state.cert("admin"), state.key("admin")))
    assert after.ok and ("IP", new) in after.sans and ("IP", old) not in after.sans, after
    for c in inv.controllers:  # every apiserver serves the new certificate, not only the one HAProxy picked
        direct = probes.get(str(c.address), 6443, "/readyz", state.cert("ca"), (state.cert("admin"),
                                                                                state.key("admin")))
        assert ("IP", new) in direct.sans and ("IP", old) not in direct.sans, c.name
    results = CP.verify(Context(moved, state, progress=QUIET))
    assert not [r for r in results if r.status == FAIL], [r for r in results if r.status == FAIL]
    assert run_on(inv, lb_node, "systemctl is-active kube-apiserver-lb").stdout.strip() == "active"


def test_a_changed_haproxy_config_is_reloaded_without_a_failed_request(roll_lab) -> None:
    """What hardway does when the load balancer's config changes (a controller added, say): reload,
    which hands the listening socket to new workers while the old ones finish."""
    from hardway.chapters.control_plane import apply
    from tests.test_bootstrap_etcd import run_on

    the_lab, state = roll_lab
    inv = the_lab.inventory
    lb_node = inv.loadbalancers[0]
    before = run_on(inv, lb_node, "systemctl show -p MainPID --value kube-apiserver-lb").stdout.strip()
    poller = Poller(str(lb_node.address), 6443, state)
    poller.start()
    try:
        time.sleep(0.5)
        for _ in range(2):
            apply.reload_balancer(Context(inv, state, progress=QUIET), lb_node)
            time.sleep(0.5)
    finally:
        poller.stop.set()
        poller.join(timeout=30)
    assert poller.failures == [] and poller.ok > 20, (poller.ok, poller.failures[:5])
    after = run_on(inv, lb_node, "systemctl show -p MainPID --value kube-apiserver-lb").stdout.strip()
    assert after == before, "reloaded by the master, not restarted"
