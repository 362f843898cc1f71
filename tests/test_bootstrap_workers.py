"""bootstrap-workers, pod-routes and their checks on the lab: real sshd, systemd, containerd 1.6 (Debian),
runc, the CNI plugins, real routing tables and ping; kubelet and kube-proxy are the stand-ins.

Tests run in file order on one set of workers; each one that breaks something shows the check
failing, repairs it the way the hint says (running the printed command), and shows it passing.
Swap and kernel modules are the host's here: their broken cases are in tests/test_workers_node.py.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hardway import deploy, remote
from hardway.chapters import Context
from hardway.chapters import pod_routes as pr
from hardway.chapters.workers import CHAPTER as WORKERS
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import verify as wv
from hardway.checks import FAIL, OK
from hardway.errors import HardwayError
from hardway.files import File
from hardway.remote import QUIET

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


def sh(inv, node: str, command: str, check: bool = True) -> str:
    r = remote.connect(inv, inv.node(node))
    try:
        return r.run(command, check=check).stdout
    finally:
        r.close()


def ctx(inv, state, **kw) -> Context:
    return Context(inv, state, progress=QUIET, **kw)


def failures(results, chapter: str | None = None) -> list:
    return [r for r in results if r.status == FAIL and (chapter is None or r.chapter == chapter)]


def invoke(lab, state, *args: str) -> subprocess.CompletedProcess[str]:
    """A command as hardway prints it, run as a user would (plus this lab's inventory and PKI)."""
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--inventory", str(lab.inventory_path),
                           "--pki-dir", str(state.root)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def printed_command(hint: str) -> list[str]:
    """The `invoke ...` command a hint names, as words."""
    m = re.search(r"`invoke ([^`]+)`", hint)
    assert m, hint
    return m.group(1).split()


@pytest.fixture(scope="module")
def cluster(lab, lab_pki):
    """The lab's controllers hold what the apiserver presents to kubelets (the control plane's
    files), so the apiserver→kubelet path can be tested from them."""
    inv = lab.inventory
    files = [File(wv.APISERVER_CA, 0o644, lab_pki.cert("ca").read_bytes(), chapter="control-plane"),
             File(wv.KUBELET_CLIENT_CERT, 0o644, lab_pki.cert("apiserver-kubelet-client").read_bytes(),
                  chapter="control-plane"),
             File(wv.KUBELET_CLIENT_KEY, 0o600, lab_pki.key("apiserver-kubelet-client").read_bytes(), secret=True,
                  chapter="control-plane")]
    for c in inv.controllers:
        r = remote.connect(inv, c)
        try:
            have = r.run(f"cat {wv.KUBELET_CLIENT_CERT} 2>/dev/null", check=False).stdout.encode()
            if have != files[1].content:  # bootstrap-control-plane may have put them there already
                deploy.install(r, files, adopt=True)
        finally:
            r.close()
    return lab, inv, lab_pki


def test_a_fresh_worker_is_refused_for_ip_forward_and_nothing_changes(cluster) -> None:
    _lab, inv, state = cluster
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: worker-\d: net.ipv4.ip_forward = 0"
                                           r".*run `invoke bootstrap-workers --fix`"):
        WORKERS.apply(ctx(inv, state))
    for w in inv.workers:
        assert sh(inv, w.name, "ls /usr/local/bin/containerd /usr/local/bin/kubelet /etc/containerd /etc/cni "
                               "/var/lib/hardway/deployed.json 2>&1", check=False).count("No such file") == 5


def test_the_printed_fix_bootstraps_every_worker(cluster) -> None:
    lab, inv, state = cluster
    done = invoke(lab, state, "bootstrap-workers", "--fix")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "fixed net.ipv4.ip_forward=1: set now, persisted in /etc/sysctl.d/99-hardway-workers.conf" in done.stdout
    assert "kubelet (stand-in)" in done.stdout
    for w in inv.workers:
        assert sh(inv, w.name, "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
        assert "1.6." in sh(inv, w.name, f"{wf.CTR} version")
        assert sh(inv, w.name, "systemctl is-active containerd kubelet kube-proxy").split() == ["active"] * 3
    results = WORKERS.verify(ctx(inv, state))
    assert not failures(results), failures(results)
    paths = [r for r in results if r.check == "apiserver-to-kubelet"]
    assert len(paths) == len(inv.workers) and all(r.status == OK for r in paths), paths


def test_rerun_writes_nothing_restarts_nothing(cluster) -> None:
    _lab, inv, state = cluster
    show = "systemctl show -p MainPID --value containerd kubelet kube-proxy"
    pids = {w.name: sh(inv, w.name, show) for w in inv.workers}
    report = WORKERS.apply(ctx(inv, state))
    assert report.summary() == "workers: nothing changed: 0 files written, 0 restarts"
    assert pids == {w.name: sh(inv, w.name, show) for w in inv.workers}


def test_ip_forward_off_fails_and_the_printed_fix_repairs_it(cluster) -> None:
    lab, inv, state = cluster
    w = inv.workers[-1].name
    sh(inv, w, "sysctl -qw net.ipv4.ip_forward=0")
    (bad,) = [r for r in failures(WORKERS.verify(ctx(inv, state))) if r.node == w]
    assert bad.check == "sysctl net.ipv4.ip_forward" and bad.detail.startswith("net.ipv4.ip_forward = 0")
    done = invoke(lab, state, *printed_command(bad.hint))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert sh(inv, w, "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert not failures(WORKERS.verify(ctx(inv, state)))


def test_bridge_nf_call_iptables_off_fails_and_fix_repairs_it(cluster) -> None:
    _lab, inv, state = cluster
    w = inv.workers[0].name
    sh(inv, w, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    (bad,) = [r for r in failures(WORKERS.verify(ctx(inv, state))) if r.node == w]
    assert bad.check == "sysctl net.bridge.bridge-nf-call-iptables"
    report = WORKERS.apply(ctx(inv, state, fix=True))
    assert report.steps[w][0].startswith("fixed net.bridge.bridge-nf-call-iptables=1")
    assert sh(inv, w, "cat /proc/sys/net/bridge/bridge-nf-call-iptables").strip() == "1"
    assert not failures(report.results)


def test_a_stub_resolver_fails_and_a_rerun_hands_the_kubelet_the_upstream_list(cluster) -> None:
    lab, inv, state = cluster
    w = inv.workers[0].name
    original = sh(inv, w, "cat /etc/resolv.conf")
    sh(inv, w, "mkdir -p /run/systemd/resolve && cp /etc/resolv.conf /run/systemd/resolve/resolv.conf && "
               "printf 'nameserver 127.0.0.53\\noptions edns0 trust-ad\\n' > /etc/resolv.conf")
    try:
        (bad,) = [r for r in failures(WORKERS.verify(ctx(inv, state))) if r.node == w and r.check == "resolv-conf"]
        assert "lists 127.0.0.53" in bad.detail and "plugin/loop" in bad.detail
        done = invoke(lab, state, *printed_command(bad.hint))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        assert 'resolvConf: "/run/systemd/resolve/resolv.conf"' in sh(inv, w, f"cat {wf.KUBELET_CONFIG}")
        assert not failures(WORKERS.verify(ctx(inv, state)))
    finally:
        sh(inv, w, f"printf '%s' {original!r} > /etc/resolv.conf && rm -rf /run/systemd/resolve")
    assert WORKERS.apply(ctx(inv, state)).restarted == {w: ["kubelet"]}  # back to /etc/resolv.conf


def test_missing_cni_config_fails_with_containerds_own_words_and_a_rerun_repairs_it(cluster) -> None:
    lab, inv, state = cluster
    w = inv.workers[1].name
    # the kubelet Requires= containerd: it restarts too; let it serve again before judging the rest
    sh(inv, w, f"rm {wf.CNI_BRIDGE} {wf.CNI_LOOPBACK} && systemctl restart containerd && for i in $(seq 150); do "
               f"curl -sf http://127.0.0.1:{wf.KUBELET_HEALTHZ}/healthz >/dev/null && break; sleep 0.2; done")
    bad = [r for r in failures(WORKERS.verify(ctx(inv, state))) if r.node == w]
    assert {r.check for r in bad} == {"cni", "files", "journal"}, bad
    journal = next(r for r in bad if r.check == "journal")
    assert "cni plugin not initialized" in journal.detail
    done = invoke(lab, state, *printed_command(journal.hint))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert not failures(WORKERS.verify(ctx(inv, state)))


def _cert_without_ip_san(state, node: str) -> tuple[bytes, bytes]:
    ca = x509.load_pem_x509_certificate(state.cert("ca").read_bytes())
    ca_key = serialization.load_pem_private_key(state.key("ca").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_a_kubelet_cert_without_the_node_ip_fails_the_apiserver_path_and_a_rerun_repairs_it(cluster) -> None:
    lab, inv, state = cluster
    w = inv.workers[0]
    cert, key = _cert_without_ip_san(state, w.name)
    r = remote.connect(inv, w)
    try:
        r.run(f"cat > {wf.KUBELET_CERT} <<'EOF'\n{cert.decode()}EOF\n"
              f"cat > {wf.KUBELET_KEY} <<'EOF'\n{key.decode()}EOF\nsystemctl restart kubelet")
    finally:
        r.close()
    results = WORKERS.verify(ctx(inv, state))
    (bad,) = [x for x in failures(results) if x.check == "apiserver-to-kubelet"]
    assert bad.node == w.name and f"does not carry {w.address}" in bad.detail
    assert "no alternative certificate subject name matches" in bad.detail
    done = invoke(lab, state, "bootstrap-workers")  # the hint: re-run (the PKI's certificate has the IP)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert not failures(WORKERS.verify(ctx(inv, state)))


def test_a_missing_tool_fails_until_it_is_installed_again(cluster) -> None:
    _lab, inv, state = cluster
    w = inv.workers[1].name
    sh(inv, w, "mv /usr/bin/socat /usr/bin/socat.hidden")
    try:
        (bad,) = [r for r in failures(WORKERS.verify(ctx(inv, state))) if r.node == w]
        assert bad.check == "tools" and "socat is not installed" in bad.detail and "apt-get install socat" in bad.hint
    finally:
        sh(inv, w, "mv /usr/bin/socat.hidden /usr/bin/socat")
    assert not failures(WORKERS.verify(ctx(inv, state)))


# --- pod routes -------------------------------------------------------------------------------------


def routes(inv, node: str) -> str:
    return sh(inv, node, "ip route show table main")


def test_pod_routes_everywhere_survive_in_a_boot_unit_and_pods_gateways_ping(cluster) -> None:
    lab, inv, state = cluster
    done = invoke(lab, state, "pod-routes")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    for n in pr.nodes_routed(inv):
        table = routes(inv, n.name)
        for r in pr.wanted(inv, n):
            assert f"{r.dst} via {r.via} dev eth0 proto 211" in table, (n.name, table)
        assert sh(inv, n.name, f"systemctl is-enabled {pr.UNIT}").strip() == "enabled"
    results = pr.CHAPTER.verify(ctx(inv, state))
    pings = [r for r in results if r.check == "ping"]
    assert len(pings) == len(inv.workers) * (len(inv.workers) - 1) and all(r.status == OK for r in pings), pings
    for w in inv.workers:  # the probe bridges are gone again
        assert pr.PROBE_LINK not in sh(inv, w.name, "ip -o link")
    again = pr.CHAPTER.apply(ctx(inv, state))
    assert again.summary() == "pod-routes: nothing changed: 0 files written, 0 restarts"


def test_the_boot_unit_puts_the_routes_back(cluster) -> None:
    _lab, inv, state = cluster
    w = inv.workers[0].name
    sh(inv, w, "ip route flush proto 211 && systemctl restart hardway-pod-routes")
    assert not failures(pr.CHAPTER.verify(ctx(inv, state)))


def test_a_removed_route_fails_verify_and_ping_and_the_printed_command_repairs_it(cluster) -> None:
    lab, inv, state = cluster
    w0, w1 = inv.workers[0], inv.workers[1]
    sh(inv, w0.name, f"ip route del {w1.pod_cidr} proto 211")
    bad = failures(pr.CHAPTER.verify(ctx(inv, state)))
    assert {(r.check, r.node) for r in bad} == {("routes", w0.name), ("ping", w0.name), ("ping", w1.name)}, bad
    route = next(r for r in bad if r.check == "routes")
    done = invoke(lab, state, *printed_command(route.hint))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert f"route {w1.pod_cidr} via {w1.address} added" in done.stdout
    assert not failures(pr.CHAPTER.verify(ctx(inv, state)))


def test_a_conflicting_route_is_one_line_exit_1_and_changes_nothing_on_any_node(cluster) -> None:
    lab, inv, state = cluster
    w0, w1 = inv.workers[0], inv.workers[1]
    foreign = inv.controllers[0].address
    sh(inv, w0.name, f"ip route del {w1.pod_cidr} proto 211 && ip route add {w1.pod_cidr} via {foreign}")

    def now() -> dict[str, tuple[str, str]]:
        return {n.name: (routes(inv, n.name), sh(inv, n.name, f"sha256sum {pr.UNIT_PATH}"))
                for n in pr.nodes_routed(inv)}

    try:
        before = now()
        done = invoke(lab, state, "pod-routes")
        assert done.returncode == 1
        err = done.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: preflight failed, nothing was changed: {w0.name}: a route "
                                                   f"{w1.pod_cidr} via {inv.controllers[0].address} (proto boot) "
                                                   "already exists"), done.stderr
        assert now() == before
    finally:
        sh(inv, w0.name, f"ip route del {w1.pod_cidr}")
    assert invoke(lab, state, "pod-routes").returncode == 0
