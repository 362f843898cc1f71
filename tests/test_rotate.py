"""rotate-certs planning and its error paths over the recording fake; the lab test is test_rotate_lab.py."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from hardway import deploy, inventory, jumpbox, pki, plan, rotate
from hardway.chapters import pki as pki_chapter
from hardway.errors import HardwayError
from hardway.facts import FactOutput
from hardway.remote import Progress
from hardway.state import PkiState
from tests import cp_fakes
from tests.fakes import FakeCluster, FakeFile, FakeService

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "inventory" / "sample.yaml").read_text()
QUIET = Progress(sink=lambda _line: None)
OLD, NEW = "10.240.0.100", "10.240.0.200"


def moved(text: str = SAMPLE) -> inventory.Inventory:
    assert f"address: {OLD}" in text
    return inventory.parse(text.replace(f"address: {OLD}", f"address: {NEW}"), "moved.yaml")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch) -> tuple[inventory.Inventory, PkiState, FakeCluster]:
    """The sample cluster with every planned file on its nodes and every service running."""
    inv = inventory.parse(SAMPLE, "sample.yaml")
    state = PkiState(tmp_path / "pki")
    jumpbox.generate(inv, state)
    cluster = FakeCluster()
    for node in inv.nodes:
        files = plan.node_files(inv, node, state)
        deploy.install(cluster.connector(inv, node), files)
        fake = cluster[node.name]
        fake.services = {s: FakeService(True, fake.tick()) for f in files for s in f.services}
        fake.facts["etcd_health"] = FactOutput(f"https://{node.address}:2379 is healthy", 0)
        fake.facts.update({"containerd_version": "Server:\n  Version: 2.1.0", "kubelet_healthz": "ok",
                           "kube_proxy_healthz": "{}"})  # a restarted worker service answers
        if node.is_controller:
            cp_fakes.controller(fake)
        if node.is_loadbalancer:
            cp_fakes.HAProxy(cluster, fake, inv)
        fake.commands.clear()
    cp_fakes.see_through(monkeypatch, cluster, inv)
    return inv, state, cluster


def test_dry_run_changes_nothing_and_names_what_and_why(deployed) -> None:
    _inv, state, cluster = deployed
    before = snapshot(state.root)
    node_files = {n: dict(f.files) for n, f in cluster.nodes.items()}
    the_plan = rotate.plan_rotation(moved(), state, connector=cluster.connector, progress=QUIET)
    assert snapshot(state.root) == before, "a dry run must not touch the PKI state"
    assert {n: dict(f.files) for n, f in cluster.nodes.items()} == node_files, "nor any node"
    changed = {(o.kind, o.name): o for o in the_plan.changed_outcomes}
    assert set(changed) == {("cert", "kube-apiserver"), ("kubeconfig", "admin"), ("kubeconfig", "kube-proxy"),
                            ("kubeconfig", "kubelet-worker-0"), ("kubeconfig", "kubelet-worker-1")}
    assert f"SAN added: IP {NEW}" in changed[("cert", "kube-apiserver")].reasons
    assert f"SAN removed: IP {OLD}" in changed[("cert", "kube-apiserver")].reasons
    text = the_plan.format()
    assert "kept      " in text and "ca" in text.split("kept      ", 1)[1]
    by_node = {n.node.name: n for n in the_plan.nodes}
    why = {c.path: c.why for c in by_node["controller-0"].changes}
    assert sorted(why) == ["/etc/kubernetes/pki/kube-apiserver.crt", "/etc/systemd/system/kube-apiserver.service"]
    assert why["/etc/kubernetes/pki/kube-apiserver.crt"].startswith("cert kube-apiserver reissued: SAN added")
    # the unit embeds the endpoint (--service-account-issuer)
    assert why["/etc/systemd/system/kube-apiserver.service"] == "rendered from the inventory: content changed"
    assert sorted(c.path for c in by_node["worker-0"].changes) == ["/var/lib/kube-proxy/kubeconfig",
                                                                   "/var/lib/kubelet/kubeconfig"]
    assert rotate.restart_sequence(the_plan.nodes) == [
        ("kube-apiserver", "controller-0"), ("kube-apiserver", "controller-1"), ("kube-apiserver", "controller-2"),
        ("kubelet", "worker-0"), ("kubelet", "worker-1"), ("kube-proxy", "worker-0"), ("kube-proxy", "worker-1")]


def test_real_run_matches_the_dry_run_file_for_file(deployed) -> None:
    _inv, state, cluster = deployed
    new_inv = moved()
    dry = rotate.plan_rotation(new_inv, state, connector=cluster.connector, progress=QUIET)
    ca_before = state.cert("ca").read_bytes()
    report = rotate.rotate(new_inv, state, connector=cluster.connector, progress=QUIET)
    written = {(node, path) for node, paths in report.written.items() for path in paths}
    assert written == dry.file_set()
    assert [(s, n) for s, n in report.restarted] == rotate.restart_sequence(dry.nodes)
    assert state.cert("ca").read_bytes() == ca_before
    # what landed is what the plan now says, everywhere
    for node in new_inv.nodes:
        for f in plan.node_files(new_inv, node, state):
            assert cluster[node.name].files[f.path].data == f.data(), (node.name, f.path)


def test_old_address_disappears_from_every_san_and_server_url(deployed) -> None:
    _inv, state, cluster = deployed
    rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    old = ipaddress.ip_address(OLD)
    for cert_path in state.root.glob("*.crt"):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        assert old not in sans.get_values_for_type(x509.IPAddress), cert_path.name
    for kc in (state.root / "kubeconfigs").glob("*.kubeconfig"):
        assert OLD not in kc.read_text(), kc.name
        server = yaml.safe_load(kc.read_text())["clusters"][0]["cluster"]["server"]
        assert server in (f"https://{NEW}:6443", "https://127.0.0.1:6443")
        assert base64.b64decode(yaml.safe_load(kc.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"]) == state.cert("ca").read_bytes()


def test_second_run_is_a_no_op(deployed) -> None:
    _inv, state, cluster = deployed
    rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    again = rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    assert again.written == {} and again.restarted == []
    assert again.plan.changed_outcomes == []


def test_interrupted_run_converges(deployed) -> None:
    _inv, state, cluster = deployed
    cluster["worker-1"].unreachable = True
    with pytest.raises(HardwayError, match="cannot inspect worker-1"):
        rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    cluster["worker-1"].unreachable = False
    report = rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    assert set(report.written) == {"controller-0", "controller-1", "controller-2", "worker-0", "worker-1"}
    # files pushed by a run whose restarts never happened are picked up by the next run
    cluster["worker-0"].services["kubelet"].started = 0
    fix = rotate.rotate(moved(), state, connector=cluster.connector, progress=QUIET)
    assert fix.written == {} and fix.restarted == [("kubelet", "worker-0")]


def test_extra_sans_go_through_the_same_path(deployed) -> None:
    _inv, state, cluster = deployed
    text = SAMPLE.replace("kube-apiserver: [api.hardway.lan]",
                          "kube-apiserver: [api.hardway.lan]\n    etcd: [etcd.lan]")
    the_plan = rotate.plan_rotation(inventory.parse(text, "x.yaml"), state, connector=cluster.connector,
                                    progress=QUIET)
    assert {o.name for o in the_plan.changed_outcomes} == {"etcd-controller-0", "etcd-controller-1",
                                                           "etcd-controller-2"}
    assert rotate.restart_sequence(the_plan.nodes) == [("etcd", "controller-0"), ("etcd", "controller-1"),
                                                       ("etcd", "controller-2")]
    for n in the_plan.nodes:
        assert [c.path for c in n.changes] == (["/etc/etcd/etcd.crt"] if n.node.is_controller else [])


def test_expiring_certificates_are_renewed_the_same_way(deployed) -> None:
    from datetime import timedelta

    inv, state, cluster = deployed
    the_plan = rotate.plan_rotation(inv, state, renew_within=timedelta(days=400), connector=cluster.connector,
                                    progress=QUIET)
    reissued = [o for o in the_plan.changed_outcomes if o.kind == "cert"]
    assert len(reissued) == len(pki.catalogue(inv)) - len(pki.CA_NAMES)  # never a CA: never silently replaced
    assert all(any("expires" in r for r in o.reasons) for o in reissued)


def test_a_leftover_old_address_is_a_check_failure(deployed) -> None:
    _inv, state, _cluster = deployed
    new_inv = moved()
    # only the certificates were reissued: the kubeconfigs still name the old address
    pki.ensure_certificates(new_inv, state)
    results = {(r.check, r.node): r for r in pki_chapter.results(new_inv, state)}
    stale = results[("kubeconfig", "admin")]
    assert stale.status == "fail" and f"server https://{OLD}:6443 → https://{NEW}:6443" in stale.detail
    assert results[("kubeconfig", "kube-scheduler")].status == "ok"  # talks to 127.0.0.1
    jumpbox.generate(new_inv, state)
    assert {r.status for r in pki_chapter.results(new_inv, state)} == {"ok"}


def test_a_world_readable_kubeconfig_or_encryption_config_is_a_check_failure(deployed) -> None:
    inv, state, _cluster = deployed
    state.kubeconfig("admin").chmod(0o644)
    state.encryption_config.chmod(0o640)
    failed = {r.node: r.detail for r in pki_chapter.results(inv, state) if r.status == "fail"}
    assert failed == {"admin.kubeconfig": f"{state.kubeconfig('admin')} is 0644, want 0600",
                      "encryption-config.yaml": f"{state.encryption_config} is 0640, want 0600"}
    jumpbox.generate(inv, state)  # tightens them again
    assert {r.status for r in pki_chapter.results(inv, state)} == {"ok"}


def test_rotation_never_touches_a_file_hardway_did_not_deploy(tmp_path: Path) -> None:
    """The Debian package's /etc/containerd/config.toml on a worker where the workers chapter was
    never applied: a planned path, but not hardway's file. Neither the dry run nor the real run
    may replace it, and containerd is not restarted."""
    inv = inventory.parse(SAMPLE, "sample.yaml")
    state = PkiState(tmp_path / "pki")
    jumpbox.generate(inv, state)
    cluster = FakeCluster()
    for node in inv.controllers:  # only etcd and the control plane are deployed
        deploy.install(cluster.connector(inv, node), plan.node_files(inv, node, state))
        cluster[node.name].facts["etcd_health"] = FactOutput("healthy", 0)
    debian = FakeFile(b"# containerd config from the Debian package\n", mtime=3)
    for w in inv.workers:
        cluster[w.name].files["/etc/containerd/config.toml"] = debian
        cluster[w.name].services["containerd"] = FakeService(True, 5)
    the_plan = rotate.plan_rotation(inv, state, connector=cluster.connector, progress=QUIET)
    by_node = {n.node.name: n for n in the_plan.nodes}
    assert by_node["worker-0"].changes == [] and by_node["worker-0"].restarts == []
    assert by_node["worker-0"].foreign == ["/etc/containerd/config.toml"]
    assert "/etc/containerd/config.toml: not deployed by hardway; left alone" in the_plan.format()
    report = rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    for w in inv.workers:
        assert cluster[w.name].files["/etc/containerd/config.toml"] is debian
        assert cluster[w.name].restarts == []
    assert report.restarted == []
