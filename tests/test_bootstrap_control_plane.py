"""bootstrap-control-plane and `verify --chapter control-plane` on the lab: real sshd, systemd, etcd,
HAProxy and kubectl; the Kubernetes server components are their stand-ins (no real binary here).

Tests run in file order on one bootstrapped control plane; each one that breaks something repairs it.
A lab of their own (3 controllers, a worker, the load balancer): the session lab's etcd tests start
from nothing.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters import Context
from hardway.chapters.control_plane import CHAPTER as CP
from hardway.chapters.control_plane import files as cp_files
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.checks import FAIL, OK, SKIP
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.test_bootstrap_etcd import host_etcdctl, run_on

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def bootstrap(inv, state, **kw):  # -> ApplyReport
    return CP.apply(Context(inv, state, progress=QUIET, **kw))


def failures(results) -> list:
    return [r for r in results if r.status == FAIL]


def pids(inv) -> dict[str, str]:
    out = {}
    for n in (*inv.controllers, *inv.loadbalancers):
        units = " ".join(CP.node_units(n))
        out[n.name] = run_on(inv, n, f"systemctl show -p MainPID --value {units}").stdout.split()
    return out


def hashes(inv, paths: list[str]) -> dict[str, str]:
    return {n.name: run_on(inv, n, f"sha256sum {' '.join(paths)} 2>/dev/null; true").stdout
            for n in inv.controllers}


def host_kubectl(state, *args: str) -> subprocess.CompletedProcess[str]:
    """Real kubectl on the jumpbox with the admin kubeconfig: through the API endpoint (the load balancer)."""
    return subprocess.run(["kubectl", f"--kubeconfig={state.kubeconfig('admin')}", "--request-timeout=10s", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def lab(lab_factory):  # this module's own, in place of the session lab
    return lab_factory(3, 1, loadbalancers=1)


@pytest.fixture(scope="module")
def cluster(lab, tmp_path_factory) -> tuple:
    from hardway import jumpbox
    from hardway.state import PkiState

    inv = lab.inventory
    assert inv.loadbalancers, "the lab has its load balancer (lb-0)"
    state = PkiState(tmp_path_factory.mktemp("pki") / lab.name)
    jumpbox.generate(inv, state)
    report = ETCD.apply(Context(inv, state, progress=QUIET))
    assert not failures(report.results), failures(report.results)
    return inv, state


def test_bootstrap_from_scratch_through_the_load_balancer(cluster) -> None:
    inv, state = cluster
    report = bootstrap(inv, state)
    assert report.started == {**{c.name: list(UNITS) for c in inv.controllers}, "lb-0": [lb.UNIT]}
    assert not failures(report.results), failures(report.results)
    assert "(stand-in)" in report.summary() and "apiserver→kubelet RBAC: skipped: stand-in" in report.summary()
    rbac = [r for r in report.results if r.check == "rbac"]
    assert [r.status for r in rbac] == [SKIP] and rbac[0].detail.startswith("skipped: stand-in")
    backends = [r for r in report.results if r.check == "backends"]
    assert [r.status for r in backends] == [OK] * 3 and all("L7OK" in r.detail for r in backends)
    # real kubectl on the jumpbox, the admin kubeconfig, real HAProxy, a stand-in apiserver behind it
    ready = host_kubectl(state, "get", "--raw", "/readyz")
    assert ready.returncode == 0 and ready.stdout.strip() == "ok", ready.stderr
    version = json.loads(host_kubectl(state, "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.32.3-hardway-standin"


def test_rerun_writes_nothing_and_restarts_nothing(cluster) -> None:
    inv, state = cluster
    before = pids(inv)
    report = bootstrap(inv, state)
    assert report.written == {n: [] for n in report.written} and not report.started and not report.restarted
    assert report.summary().startswith("control-plane: nothing changed: 0 files written, 0 restarts")
    assert pids(inv) == before


def test_the_listener_fact_names_each_ports_process_and_unit_on_real_nodes(cluster) -> None:
    """The survey's "who holds this port" (one awk over `ss`, /proc/PID/cgroup) read on running nodes."""
    from hardway import remote
    from hardway.chapters.control_plane.preflight import LISTENER_UNITS
    from hardway.facts import gather

    inv, _state = cluster
    seen = {}
    for node in (inv.controllers[0], inv.loadbalancers[0]):
        r = remote.connect(inv, node)
        try:
            seen[node.name] = gather(r, [LISTENER_UNITS])[LISTENER_UNITS]
        finally:
            r.close()
    pid, command, unit = seen[inv.controllers[0].name][6443]
    assert pid > 1 and unit == "kube-apiserver" and command, seen
    assert seen[inv.controllers[0].name][2379][2] == "etcd", seen
    pid, command, unit = seen[inv.loadbalancers[0].name][6443]  # a worker process, in the master's unit
    assert command == "haproxy" and unit == lb.UNIT, seen


def test_etcd_refuses_a_workers_certificate_and_accepts_the_apiservers(cluster) -> None:
    inv, state = cluster
    endpoints = ",".join(inv.etcd_client_url(c) for c in inv.controllers)
    for cert in ("kubelet-worker-0", "kube-proxy"):  # what a worker holds: the cluster CA's
        proc = subprocess.run(
            ["etcdctl", f"--endpoints={endpoints}", f"--cacert={state.cert('etcd-ca')}", f"--cert={state.cert(cert)}",
             f"--key={state.key(cert)}", "--dial-timeout=3s", "--command-timeout=5s", "get", "/registry", "--prefix",
             "--keys-only"], capture_output=True, text=True, timeout=60, env={"ETCDCTL_API": "3", "PATH": "/usr/bin"})
        assert proc.returncode != 0, f"etcd accepted {cert}: {proc.stdout}"
    ok = host_etcdctl(inv, state, inv.controllers, "endpoint", "health")
    assert ok.returncode == 0, ok.stderr


def test_a_stopped_apiserver_is_taken_out_by_haproxy_and_verify_names_it(cluster) -> None:
    inv, state = cluster
    down = inv.controllers[1]
    run_on(inv, down, "systemctl stop kube-apiserver")
    try:
        for _ in range(40):  # HAProxy's check: every second, two failures mark it down
            results = CP.verify(Context(inv, state, progress=QUIET))
            backend = next(r for r in results if r.check == "backends" and down.name in r.detail)
            if backend.detail.startswith(f"{down.name} DOWN"):  # "UP 1/2" on the way there: also a failure
                break
        assert backend.detail.startswith(f"{down.name} DOWN"), backend
        assert next(r for r in results if r.check == "unit-active" and r.node == down.name
                    and "kube-apiserver" in r.detail).detail == "kube-apiserver (stand-in) is inactive"
        # the endpoint keeps serving through the other two
        assert host_kubectl(state, "get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        report = bootstrap(inv, state)
    assert report.started == {down.name: ["kube-apiserver"]}
    assert not failures(report.results), failures(report.results)


def test_a_broken_unit_is_named_by_verify_and_repaired(cluster) -> None:
    inv, state = cluster
    node = inv.controllers[2]
    unit = cp_files.UNIT_PATHS["kube-scheduler"]
    run_on(inv, node, rf"sed -i '0,/\\$/s/\\$/\\ /' {unit} && systemctl daemon-reload")
    bad = {r.check: r for r in failures(CP.verify(Context(inv, state, progress=QUIET))) if r.node == node.name}
    assert "unit-matches-render" in bad and "unit-lint" in bad, bad
    report = bootstrap(inv, state)
    assert report.written[node.name] == [unit] and report.restarted == {node.name: ["kube-scheduler"]}
    assert not failures(report.results), failures(report.results)


# --- bad input: one line, exit 1, nothing half-started ---------------------------------------


def cli(lab, state, inventory_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "bootstrap-control-plane",
                           "--inventory", str(inventory_path), "--pki-dir", str(state.root), *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_a_binary_for_another_architecture_changes_nothing(cluster, lab, tmp_path) -> None:
    inv, state = cluster
    arm = tmp_path / "kube-apiserver"
    arm.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (0xB7).to_bytes(2, "little") + b"\0" * 64)
    arm.chmod(0o755)
    changed = tmp_path / "inventory.yaml"
    changed.write_text(lab.inventory_path.read_text().replace(
        "binaries:\n", f"binaries:\n  kube-apiserver: {{path: {arm}}}\n"))
    before = pids(inv)
    line = one_error_line(cli(lab, state, changed))
    assert line.startswith("error: preflight failed, nothing was changed: controller-0: binaries.kube-apiserver: ")
    assert "is built for aarch64 but controller-0 is x86_64; point binaries.kube-apiserver at the x86_64 " \
           "release" in line
    assert pids(inv) == before


def test_a_missing_binary_changes_nothing(cluster, lab, tmp_path) -> None:
    inv, state = cluster
    changed = tmp_path / "inventory.yaml"
    changed.write_text(lab.inventory_path.read_text().replace(
        "binaries:\n", f"binaries:\n  kube-scheduler: {{path: {tmp_path / 'kube-scheduler'}}}\n"))
    before = pids(inv)
    line = one_error_line(cli(lab, state, changed))
    # the task fetches the chapter's binaries first: a path that is not there stops it before any node
    assert line == f"error: binaries.kube-scheduler.path: {tmp_path / 'kube-scheduler'} does not exist; fix the path"
    assert pids(inv) == before


def test_an_unknown_flag_changes_nothing(cluster, monkeypatch) -> None:
    inv, state = cluster
    real = cp_files.ARGV["kube-apiserver"]
    monkeypatch.setitem(cp_files.ARGV, "kube-apiserver", lambda i, n: [*real(i, n), "--insecure-port=8080"])
    paths = [cp_files.UNIT_PATHS["kube-apiserver"]]
    before, files_before = pids(inv), hashes(inv, paths)
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: the kube-apiserver unit: "
                                           r"unknown flag --insecure-port"):
        bootstrap(inv, state)
    assert pids(inv) == before and hashes(inv, paths) == files_before


def test_a_certificate_without_the_endpoint_changes_nothing(cluster, lab, tmp_path) -> None:
    inv, state = cluster
    vip = str(inv.loadbalancers[0].address).rsplit(".", 1)[0] + ".6"  # an address lb-0 might get: not in the cert
    changed = tmp_path / "inventory.yaml"
    changed.write_text(lab.inventory_path.read_text() + f"\napi_endpoint: {{address: {vip}}}\n")
    before = pids(inv)
    line = one_error_line(cli(lab, state, changed))
    assert f"kube-apiserver.crt does not name IP {vip} (api_endpoint.address)" in line
    assert line.endswith("run `invoke rotate-certs` (it reissues it and restarts the apiservers one at a time)")
    assert pids(inv) == before


def test_a_load_balancer_that_forwards_nowhere_is_one_line(cluster, lab, tmp_path) -> None:
    """The user's own load balancer at the endpoint (no loadbalancer node in the inventory), sending
    every connection to a port where no apiserver listens."""
    inv, state = cluster
    node = inv.loadbalancers[0]
    config = ("defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"
              "frontend f\n  bind :6443\n  default_backend b\nbackend b\n"
              + "".join(f"  server {c.name} {c.address}:6444\n" for c in inv.controllers))
    external = tmp_path / "inventory.yaml"
    text = lab.inventory_path.read_text()
    external.write_text("\n".join(ln for ln in text.splitlines() if "lb-0" not in ln and "HAProxy" not in ln)
                        + f"\napi_endpoint: {{address: {node.address}}}\n")
    assert not inventory.load(external).loadbalancers
    encoded = base64.b64encode(config.encode()).decode()
    run_on(inv, node, f"systemctl stop {lb.UNIT} && echo {encoded} | base64 -d > /root/nowhere.cfg && "
                      f"systemd-run --unit=nowhere-lb {lb.HAPROXY} -db -f /root/nowhere.cfg")
    try:
        before = pids(inv)
        line = one_error_line(cli(lab, state, external))
        assert line == (f"error: the load balancer at {node.address}:6443 accepts connections but forwards nowhere: "
                        "point its backends at every controller's :6443 (TCP pass-through)")
        assert {k: v for k, v in pids(inv).items() if k != node.name} == \
               {k: v for k, v in before.items() if k != node.name}, "no apiserver was restarted"
    finally:
        run_on(inv, node, f"systemctl stop nowhere-lb; rm -f /root/nowhere.cfg; systemctl start {lb.UNIT}")
    report = bootstrap(inv, state)
    assert not failures(report.results), failures(report.results)


def test_kubeconfig_admin_gives_kubectl_on_the_jumpbox_through_the_load_balancer(cluster, lab, tmp_path) -> None:
    _, state = cluster
    out = tmp_path / "kube" / "config"
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "kubeconfig.admin", "--out", str(out),
                           "--inventory", str(lab.inventory_path), "--pki-dir", str(state.root)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    ready = subprocess.run(["kubectl", f"--kubeconfig={out}", "get", "--raw", "/readyz"], capture_output=True,
                           text=True, timeout=60)
    assert ready.stdout.strip() == "ok", ready.stderr


def test_verify_task_json_names_stand_ins_and_skips(cluster, lab) -> None:
    _, state = cluster
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "verify", "--chapter", "control-plane",
                           "--json", "--inventory", str(lab.inventory_path), "--pki-dir", str(state.root)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["failed"] is False
    statuses = {r["status"] for r in doc["results"]}
    assert "skip" in statuses and all("(stand-in)" in r["detail"] for r in doc["results"]
                                      if r["check"] == "unit-active" and "kube-" in r["detail"]
                                      and "lb" not in r["detail"])
