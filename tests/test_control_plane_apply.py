"""The control-plane chapter's apply path over the fact-level fake: preflight, push, concurrent start,
readiness waits, restarts behind the load balancer, the finishing steps; idempotency and ordering.

Each test would fail if the logic it names were broken. The same paths run against real sshd, systemd,
etcd, HAProxy and kubectl in tests/test_bootstrap_control_plane.py (lab).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hardway import inventory, jumpbox
from hardway.chapters import Context
from hardway.chapters.control_plane import CHAPTER as CP
from hardway.chapters.control_plane import files as cp_files
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane import probes
from hardway.errors import HardwayError
from hardway.facts import FactOutput
from hardway.remote import QUIET
from hardway.state import PkiState
from tests import cp_fakes
from tests.fakes import FakeCluster, restart_whatever_runs

ROOT = Path(__file__).resolve().parent.parent
CONTROLLERS = ("controller-0", "controller-1", "controller-2")
API_UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def elf(path: Path, machine: int = 0x3E) -> Path:
    """A file that reads as an ELF executable for ``machine`` (x86-64 by default)."""
    path.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + machine.to_bytes(2, "little") + b"\0" * 64)
    path.chmod(0o755)
    return path


def sample(tmp: Path, extra_binaries: str = "", machine: int = 0x3E) -> inventory.Inventory:
    text = (ROOT / "inventory" / "sample.yaml").read_text()
    kubectl = elf(tmp / "kubectl", machine)
    text = text.replace("  etcdctl: {path: ./bin/etcdctl}\n",
                        f"  etcdctl: {{path: ./bin/etcdctl}}\n  kubectl: {{path: {kubectl}}}\n{extra_binaries}")
    return inventory.parse(text, "sample.yaml", base=ROOT / "inventory")


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> tuple[inventory.Inventory, PkiState]:
    tmp = tmp_path_factory.mktemp("cp")
    inv = sample(tmp)
    state = PkiState(tmp / "pki")
    jumpbox.generate(inv, state)
    return inv, state


JUMPBOX: list[cp_fakes.Jumpbox] = []  # the fake cluster the jumpbox's TLS probes see


def fake_cluster(inv: inventory.Inventory, unready_polls: int = 0) -> FakeCluster:
    cluster = FakeCluster()
    for c in inv.controllers:
        cp_fakes.controller(cluster[c.name])
    for n in inv.loadbalancers:
        cluster.haproxy = cp_fakes.HAProxy(cluster, cluster[n.name], inv)  # type: ignore[attr-defined]
    JUMPBOX[:] = [cp_fakes.Jumpbox(cluster, inv, unready_polls)]
    return cluster


@pytest.fixture(autouse=True)
def jumpbox_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS probes from the jumpbox (the lab tests make them for real) see the fake cluster."""
    monkeypatch.setattr(probes, "get", lambda *a, **kw: JUMPBOX[0].get(*a, **kw))


def apply(inv, state, cluster: FakeCluster, **kw):
    return CP.apply(Context(inv, state, connector=cluster.connector, progress=QUIET, **kw))


def clear(cluster: FakeCluster) -> None:
    cluster.log.clear()
    for node in cluster.nodes.values():
        node.commands.clear(), node.uploads.clear(), node.starts.clear(), node.restarts.clear(), node.events.clear()


def push_of(node) -> str:
    return next(c for c in node.commands if c.startswith("set -e;"))


# --- a fresh control plane -------------------------------------------------------------------


def test_fresh_control_plane_starts_everything_in_the_push_then_waits_then_finishes(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv, unready_polls=2)
    report = apply(inv, state, cluster)
    assert report.started == {**{c: list(API_UNITS) for c in CONTROLLERS}, "lb-0": [lb.UNIT]}
    assert report.restarted == {}
    assert not [r for r in report.results if r.status == "fail"], [r for r in report.results if r.status == "fail"]
    for c in CONTROLLERS:
        node = cluster[c]
        assert push_of(node).endswith("systemctl start kube-apiserver kube-controller-manager kube-scheduler")
        assert "/usr/local/bin/kube-apiserver" in report.written[c], "the stand-in, since the sample names none"
        assert node.events.index("start kube-apiserver") < node.events.index("probe kube-apiserver")
    assert push_of(cluster["lb-0"]).endswith(f"systemctl start {lb.UNIT}")
    assert sorted(report.written["lb-0"]) == sorted([lb.CA, lb.HEALTH_CERT, lb.HEALTH_KEY, lb.CONFIG, lb.UNIT_PATH])
    # every service was started before any was waited for: none waits on another node's start
    starts = [i for i, e in enumerate(cluster.log) if ": start " in e]
    first_wait = min(i for i, e in enumerate(cluster.log) if e.endswith("probe kube-apiserver"))
    assert len(starts) == 3 * 3 + 1 and max(starts) < first_wait
    assert "apiserver→kubelet RBAC: skipped: stand-in" in report.notes
    summary = report.summary()
    assert "kube-apiserver (stand-in) kube-controller-manager (stand-in) kube-scheduler (stand-in) on controller-0" \
        in summary and "skipped: stand-in" in summary


def test_rerun_writes_nothing_and_restarts_nothing(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    apply(inv, state, cluster)
    clear(cluster)
    report = apply(inv, state, cluster)
    assert report.written == {n: [] for n in report.written} and not report.started and not report.restarted
    assert report.summary().startswith("control-plane: nothing changed: 0 files written, 0 restarts")
    for name, node in cluster.nodes.items():
        assert node.commands == [] and node.uploads == [] and node.starts == [] and node.restarts == [], name


def test_the_rerun_test_catches_a_chapter_that_restarts_what_runs(cp, monkeypatch) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    apply(inv, state, cluster)
    clear(cluster)
    restart_whatever_runs(monkeypatch)
    report = apply(inv, state, cluster)
    assert report.restarted, "broken on purpose: the re-run test above would see these restarts"


# --- restarts: one at a time, behind the load balancer ---------------------------------------


def test_changed_apiservers_restart_one_at_a_time_drained_on_the_load_balancer(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    apply(inv, state, cluster)
    clear(cluster)
    for c in CONTROLLERS:  # the apiserver cert changed on every controller (a rotation did it by hand)
        cluster[c].files[f"{cp_files.K8S_PKI}/kube-apiserver.crt"].data = b"stale\n"
    report = apply(inv, state, cluster)
    assert report.restarted == {c: ["kube-apiserver"] for c in CONTROLLERS}
    steps = [e for e in cluster.log if "lb controller" in e or "restart kube-apiserver" in e
             or e.endswith("probe kube-apiserver")]
    for i, c in enumerate(CONTROLLERS):
        out, back = steps.index(f"lb-0: lb {c} drain"), steps.index(f"lb-0: lb {c} ready")
        restart = steps.index(f"{c}: restart kube-apiserver")
        assert out < restart < back, steps
        assert f"{c}: probe kube-apiserver" in steps[restart:back], "ready before it is put back"
        if i:
            assert steps.index(f"lb-0: lb {CONTROLLERS[i - 1]} ready") < out, "the previous one is back first"
    assert all(s == "ready" for s in cluster.haproxy.admin.values())  # type: ignore[attr-defined]


def test_an_apiserver_that_fails_its_restart_stays_drained_and_the_others_keep_serving(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    apply(inv, state, cluster)
    clear(cluster)
    for c in CONTROLLERS:
        cluster[c].files[f"{cp_files.K8S_PKI}/kube-apiserver.crt"].data = b"stale\n"
    bad = cluster["controller-1"]
    bad.facts["unit_states"] = lambda f, n: "\n\n".join(
        f"Id={u}.service\nActiveState={'failed' if u == 'kube-apiserver' and n.restarts else 'active'}\n"
        f"ActiveEnterTimestamp=@1\nUnitFileState=enabled\nMainPID=7" for u in f.args)
    bad.facts["journal"] = "(stand-in) check ok: ...\n(stand-in) error: --etcd-servers: no endpoint answered within 60s"
    with pytest.raises(HardwayError) as err:
        apply(inv, state, cluster, timeout=3)
    message = str(err.value)
    assert message.startswith("controller-1: kube-apiserver (stand-in) failed to start: “(stand-in) error: "
                              "--etcd-servers: no endpoint answered within 60s”")
    assert "stays out of rotation on lb-0 and the other apiservers keep serving" in message
    assert cluster["controller-2"].restarts == [], "nothing after the failed one is restarted"
    assert cluster.haproxy.admin == {"controller-0": "ready", "controller-1": "drain",  # type: ignore[attr-defined]
                                     "controller-2": "ready"}


def test_a_first_start_that_fails_on_one_controller_leaves_the_others_running(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    bad = cluster["controller-2"]
    bad.facts["unit_states"] = lambda f, n: "\n\n".join(
        f"Id={u}.service\nActiveState={'failed' if u == 'kube-apiserver' and n.starts else 'inactive'}\n"
        f"ActiveEnterTimestamp=\nUnitFileState=disabled\nMainPID=0" for u in f.args)
    bad.facts["journal"] = "(stand-in) error: --tls-cert-file=/etc/kubernetes/pki/kube-apiserver.crt: no such file"
    with pytest.raises(HardwayError, match=r"^controller-2: kube-apiserver \(stand-in\) failed to start"):
        apply(inv, state, cluster, timeout=3)
    for c in CONTROLLERS[:2]:
        assert all(cluster[c].services[u].active for u in API_UNITS), c
        assert not [e for e in cluster[c].events if e.startswith("stop")], "nothing is stopped"


def test_a_changed_haproxy_config_is_reloaded_not_restarted(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    apply(inv, state, cluster)
    clear(cluster)
    cluster["lb-0"].files[lb.CONFIG].data = b"# hand-edited\n"
    report = apply(inv, state, cluster)
    assert report.written["lb-0"] == [lb.CONFIG] and report.restarted == {"lb-0": [lb.UNIT]}
    assert f"reload {lb.UNIT}" in cluster["lb-0"].events and cluster["lb-0"].restarts == []


# --- preflight: one line, nothing changed ----------------------------------------------------


def nothing_changed(cluster: FakeCluster) -> None:
    for name, node in cluster.nodes.items():
        assert node.uploads == [] and node.starts == [] and not [c for c in node.commands if "set -e" in c], name


def test_etcd_not_healthy_stops_before_anything_and_names_bootstrap_etcd(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    cluster["controller-1"].facts["etcd_health"] = FactOutput(
        "https://127.0.0.1:2379 is unhealthy: failed to commit proposal: context deadline exceeded", 1)
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: controller-1: etcd is not "
                                           r"healthy on controller-1 \(.*\); .*run `invoke bootstrap-etcd` first$"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_a_port_held_by_something_else_is_named(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    cluster["controller-0"].facts["listener_units"] = "10259 4242 nginx nginx\n6443 77 kube-apiserver kube-apiserver\n"
    with pytest.raises(HardwayError, match=r"controller-0: port 10259 is held by 4242/nginx \(nginx\.service\), not "
                                           r"by our kube-scheduler unit; stop it or free the port$"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_a_load_balancer_without_haproxy_says_apt_get_install(cp) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    cluster["lb-0"].facts["haproxy_version"] = FactOutput("", 127)
    with pytest.raises(HardwayError, match=r"lb-0: HAProxy is not installed on lb-0 \(/usr/sbin/haproxy missing\): "
                                           r"run `apt-get install haproxy` there"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_an_unknown_flag_is_named_with_its_data_file(cp, monkeypatch) -> None:
    inv, state = cp
    cluster = fake_cluster(inv)
    real = cp_files.ARGV["kube-apiserver"]
    monkeypatch.setitem(cp_files.ARGV, "kube-apiserver", lambda i, n: [*real(i, n), "--insecure-port=8080"])
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: the kube-apiserver unit: "
                                           r"unknown flag --insecure-port: kube-apiserver v1\.32 has no such flag "
                                           r"\(hardway/data/kubernetes/1\.32/kube-apiserver\.yaml\)"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_a_binary_for_another_architecture_is_named_with_the_fix(cp, tmp_path) -> None:
    _, state = cp
    arm = elf(tmp_path / "kube-apiserver", machine=0xB7)
    inv = sample(tmp_path, f"  kube-apiserver: {{path: {arm}}}\n")
    cluster = fake_cluster(inv)
    with pytest.raises(HardwayError, match=r"controller-0: binaries\.kube-apiserver: .* is built for aarch64 but "
                                           r"controller-0 is x86_64; point binaries\.kube-apiserver at the x86_64 "
                                           r"release"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_a_missing_binary_is_named_with_the_line_to_fix(cp, tmp_path) -> None:
    _, state = cp
    inv = sample(tmp_path, f"  kube-apiserver: {{path: {tmp_path / 'nope'}}}\n")
    cluster = fake_cluster(inv)
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: binaries\.kube-apiserver\.path: "
                                           r".*/nope does not exist; fix the path in sample\.yaml"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_a_real_apiserver_needs_kubectl_on_the_jumpbox(cp, tmp_path, monkeypatch) -> None:
    _, state = cp
    inv = sample(tmp_path, f"  kube-apiserver: {{path: {elf(tmp_path / 'kube-apiserver', machine=0xB7)}}}\n")
    monkeypatch.setattr("shutil.which", lambda name: None)
    cluster = fake_cluster(inv)
    with pytest.raises(HardwayError, match=r"no kubectl on this jumpbox: the RBAC step runs it with the admin "
                                           r"kubeconfig; install it \(`apt-get install kubernetes-client`"):
        apply(inv, state, cluster)
    nothing_changed(cluster)


def test_an_apiserver_cert_without_the_endpoint_is_refused_naming_rotate_certs(cp, tmp_path) -> None:
    _inv, state = cp
    text = (ROOT / "inventory" / "sample.yaml").read_text().replace("address: 10.240.0.100          #",
                                                                    "address: 10.240.0.7 #")
    text = text.replace("  etcdctl: {path: ./bin/etcdctl}\n",
                        f"  etcdctl: {{path: ./bin/etcdctl}}\n  kubectl: {{path: {elf(tmp_path / 'k')}}}\n")
    moved = inventory.parse(text, "sample.yaml", base=ROOT / "inventory")  # the VIP moved; PKI not reissued
    cluster = fake_cluster(moved)
    with pytest.raises(HardwayError, match=r"kube-apiserver\.crt does not name IP 10\.240\.0\.7 "
                                           r"\(api_endpoint\.address\).*run `invoke rotate-certs`"):
        apply(moved, state, cluster)
    nothing_changed(cluster)


# --- a real apiserver: the RBAC with the jumpbox's kubectl -----------------------------------

FAKE_KUBECTL = """#!/bin/sh
# a stand-in for the jumpbox's kubectl: answers `version`, records what `apply -f -` was given
echo "$@" >> "{log}"
case "$*" in
  *" version "*) echo '{{"serverVersion": {{"gitVersion": "v1.32.3"}}}}' ;;
  *" apply -f -"*) cat > "{applied}"
      if [ -e "{applied}.seen" ]; then s=unchanged; else s=created; touch "{applied}.seen"; fi
      echo "clusterrole.rbac.authorization.k8s.io/system:kube-apiserver-to-kubelet $s"
      echo "clusterrolebinding.rbac.authorization.k8s.io/system:kube-apiserver $s" ;;
  *" get "*) echo clusterrole.rbac.authorization.k8s.io/system:kube-apiserver-to-kubelet ;;
esac
"""


def test_with_a_real_apiserver_the_rbac_is_applied_with_kubectl_once_and_unchanged_after(cp, tmp_path,
                                                                                         monkeypatch) -> None:
    _, state = cp
    arm = elf(tmp_path / "kube-apiserver", machine=0xB7)  # not runnable here: its flags come from the data
    inv = sample(tmp_path, f"  kube-apiserver: {{path: {arm}}}\n", machine=0xB7)
    log, applied = tmp_path / "kubectl.log", tmp_path / "applied.yaml"
    (tmp_path / "jumpbox").mkdir()
    kubectl = tmp_path / "jumpbox" / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(log=log, applied=applied))
    kubectl.chmod(0o755)
    monkeypatch.setattr("shutil.which", lambda name: str(kubectl) if name == "kubectl" else None)
    cluster = fake_cluster(inv)
    for node in cluster.nodes.values():
        node.arch = "aarch64"
    report = apply(inv, state, cluster)
    assert "apiserver→kubelet RBAC: applied (v1.32.3)" in report.notes
    assert "kube-apiserver kube-controller-manager (stand-in) kube-scheduler (stand-in) on controller-0" in \
        report.summary(), "the real binary is not called a stand-in, the others are"
    assert applied.read_text() == cp_files.rbac_yaml(inv)
    assert f"--kubeconfig={state.kubeconfig('admin')}" in log.read_text(), "the admin kubeconfig, via the endpoint"
    again = apply(inv, state, cluster)
    assert "apiserver→kubelet RBAC: unchanged (v1.32.3)" in again.notes
