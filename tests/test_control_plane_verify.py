"""The control-plane checks, judged purely, and the jumpbox's TLS probe against real sockets on loopback.

Each check is broken on purpose here and must fail with the cause and the fix; the lab tests break the
real thing (tests/test_bootstrap_control_plane.py).
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from hardway import inventory, jumpbox, pki
from hardway.chapters import Context
from hardway.chapters.control_plane import apply, probes, verify
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.checks import FAIL, OK, WARN
from hardway.facts import FactOutput
from hardway.remote import QUIET
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> tuple[inventory.Inventory, PkiState]:
    inv = inventory.load(ROOT / "inventory" / "sample.yaml")
    state = PkiState(tmp_path_factory.mktemp("pki") / "hardway")
    jumpbox.generate(inv, state)
    return inv, state


# --- the served certificate ------------------------------------------------------------------


def test_a_served_certificate_without_the_new_endpoint_fails_naming_rotate_certs(cp) -> None:
    inv, _ = cp
    want = pki.spec_for(inv, "kube-apiserver").sans
    stale = (*tuple(s for s in want if s != ("IP", "10.240.0.100")), ("IP", "10.240.0.99"))
    [r] = verify.judge_served(inv, inv.controllers[0], probes.Probe(probes.OK, "ok", 200, sans=stale))
    assert r.status == FAIL and r.node == "controller-0"
    assert r.detail == "serves a certificate without IP 10.240.0.100 (the API endpoint) but with IP 10.240.0.99"
    assert "`invoke rotate-certs`" in r.hint
    [r] = verify.judge_served(inv, None, probes.Probe(probes.OK, "ok", 200, sans=(*want, ("IP", "10.240.0.99"))))
    assert r.status == WARN and "also IP 10.240.0.99, which the inventory no longer has" in r.detail
    [r] = verify.judge_served(inv, None, probes.Probe(probes.OK, "ok", 200, sans=want))
    assert r.status == OK and "the endpoint 10.240.0.100 included" in r.detail


# --- HAProxy's view --------------------------------------------------------------------------


def test_backends_name_the_down_and_the_drained() -> None:
    inv = inventory.load(ROOT / "inventory" / "sample.yaml")
    out = FactOutput(
        "# pxname,svname,qcur,qmax,scur,smax,status,check_status,check_desc\n"
        "kube-apiservers,controller-0,0,0,2,3,UP,L7OK,Layer7 check passed\n"
        "kube-apiservers,controller-1,0,0,0,0,DOWN,L7STS,Layer7 wrong status\n"
        "kube-apiservers,controller-2,0,0,0,0,MAINT,L7OK,Layer7 check passed\n"
        "kube-apiservers,BACKEND,0,0,2,3,UP,,\n", 0)
    seen = lb.parse_stat(out)
    assert seen is not None and seen["controller-0"].sessions == 2
    results = verify.judge_backends(inv, inv.loadbalancers[0], seen)
    assert [(r.status, r.detail) for r in results] == [
        (OK, "controller-0 UP (L7OK Layer7 check passed)"),
        (FAIL, "controller-1 DOWN (L7STS Layer7 wrong status)"),
        (FAIL, "controller-2 is out of rotation (MAINT)")]
    assert "systemctl reload kube-apiserver-lb" in results[2].hint
    assert lb.parse_stat(FactOutput("no /run/kube-apiserver-lb/admin.sock: kube-apiserver-lb is not running", 3)) \
        is None
    [r] = verify.judge_backends(inv, inv.loadbalancers[0], None)
    assert r.status == FAIL and "journalctl -u kube-apiserver-lb" in r.hint


# --- journal signatures ----------------------------------------------------------------------


@pytest.mark.parametrize(("line", "cause", "fix"), [
    ('W0102 transport: Error while dialing: dial tcp 10.240.0.10:2379: connect: connection refused',
     "cannot reach etcd", "invoke bootstrap-etcd"),
    ("(stand-in) error: --etcd-servers: https://10.240.0.10:2379 refused --etcd-certfile=/etc/kubernetes/pki/"
     "apiserver-etcd-client.crt: TLS refused: tlsv1 alert unknown ca", "etcd trusts another CA", "rotate-certs"),
    ('E0102 x509: certificate is valid for 10.240.0.100, 127.0.0.1, not 10.240.0.200',
     "does not name the address dialed", "rotate-certs"),
    ("Error: unknown flag: --insecure-port", "flag this kube-apiserver does not know", "preflight names the flag"),
])
def test_apiserver_journal_signatures_map_to_cause_and_fix(cp, line: str, cause: str, fix: str) -> None:
    inv, _ = cp
    facts = verify.NodeFacts(states={"kube-apiserver": "failed"}, journals={"kube-apiserver": f"starting\n{line}\n"})
    found = [r for r in verify.judge_node(inv, inv.controllers[0], ("kube-apiserver",), facts, [])
             if r.check == "journal"]
    assert len(found) == 1 and found[0].status == FAIL, found
    assert cause in found[0].detail and line[:60] in found[0].detail and fix in found[0].hint


def test_a_signature_in_a_healthy_units_history_is_a_warning(cp) -> None:
    inv, _ = cp
    facts = verify.NodeFacts(states={"kube-scheduler": "active"},
                             probes={"kube-scheduler": probes.Probe(probes.OK, "10.0.0.1:10259/healthz: ok")},
                             journals={"kube-scheduler": "dial tcp 127.0.0.1:6443: connect: connection refused\n"})
    results = verify.judge_node(inv, inv.controllers[0], ("kube-scheduler",), facts, [])
    [j] = [r for r in results if r.check == "journal"]
    assert j.status == WARN and "the apiserver on this node does not answer" in j.detail


def test_rbac_is_skipped_for_a_stand_in_and_never_ok() -> None:
    node = inventory.load(ROOT / "inventory" / "sample.yaml").controllers[0]
    r = verify.judge_rbac(node, "v1.32.3-hardway-standin", None)
    assert r.status == "skip" and r.detail.startswith("skipped: stand-in")
    assert verify.judge_rbac(node, "error: 10.0.0.1:6443: connection refused", None).status == FAIL
    assert verify.judge_rbac(node, "v1.32.3", (True, "clusterrole/x")).status == OK
    assert verify.judge_rbac(node, "v1.32.3", (False, 'Error from server (NotFound): "system:kube-apiserver"')) \
        .status == FAIL


# --- the probe against real sockets ----------------------------------------------------------


def _server(handle) -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            handle(conn)
        except OSError:
            pass
        finally:
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def _tls(state: PkiState, body: bytes = b"ok"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(state.cert("kube-apiserver"), state.key("kube-apiserver"))
    ctx.load_verify_locations(state.cert("ca"))
    ctx.verify_mode = ssl.CERT_REQUIRED

    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Hardway-Stand-In: kube-apiserver\r\n\r\n%s"
                        % (len(body), body))
    return handle


def test_probe_tells_the_layers_apart(cp) -> None:
    _, state = cp
    admin = (state.cert("admin"), state.key("admin"))
    seen = probes.get("127.0.0.1", _server(_tls(state)), "/readyz", state.cert("ca"), admin)
    assert seen.ok and seen.standin and ("IP", "127.0.0.1") in seen.sans
    closed = probes.get("127.0.0.1", _server(lambda conn: conn.close()), "/readyz", state.cert("ca"), admin)
    assert closed.kind == probes.NO_TLS and "accepted the connection but closed it before TLS" in closed.detail
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert probes.get("127.0.0.1", port, "/readyz", state.cert("ca"), admin).kind == probes.REFUSED
    stranger = probes.get("127.0.0.1", _server(_tls(state)), "/readyz", state.cert("etcd-ca"), admin)
    assert stranger.kind == probes.UNTRUSTED


def test_endpoint_errors_are_one_line_naming_the_endpoint_and_the_fix(cp) -> None:
    inv, state = cp
    ctx = Context(inv, state, progress=QUIET)
    nowhere = apply.endpoint_error(ctx, probes.Probe(probes.NO_TLS, "10.240.0.100:6443: accepted ..."))
    assert nowhere.startswith("the load balancer at 10.240.0.100:6443 accepts connections but forwards nowhere: "
                              "HAProxy sees no ready apiserver")
    external = inventory.parse((ROOT / "inventory" / "sample.yaml").read_text().replace(
        "  - {name: lb-0, address: 10.240.0.100, roles: [loadbalancer]}\n", ""), "x.yaml")
    ext = apply.endpoint_error(Context(external, state, progress=QUIET), probes.Probe(probes.NO_TLS, "..."))
    assert ext.endswith("forwards nowhere: point its backends at every controller's :6443 (TCP pass-through)")
    refused = apply.endpoint_error(ctx, probes.Probe(probes.REFUSED, "..."))
    assert refused.startswith("nothing listens on the API endpoint 10.240.0.100:6443: kube-apiserver-lb is not "
                              "running on lb-0")
    assert "\n" not in nowhere + ext + refused
