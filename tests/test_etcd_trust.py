"""etcd moving to another CA during rotate-certs, over the fact-level fake: the order of the steps (both
CAs trusted everywhere before any member presents the new one; the apiservers in between), one
restart at a time, resuming an interrupted roll, and nothing to do once it is done. The lab test with
a writer is tests/test_etcd_ca_lab.py."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from hardway import deploy, etcd_trust, inventory, jumpbox, pki, plan, rotate
from hardway.chapters.control_plane import files as cp_files
from hardway.chapters.control_plane.loadbalancer import UNIT as LB_UNIT
from hardway.chapters.etcd import files as etcd_files
from hardway.remote import QUIET
from hardway.state import PkiState
from tests import cp_fakes
from tests.etcd_fakes import FakeEtcd
from tests.fakes import FakeCluster, FakeService

ROOT = Path(__file__).resolve().parent.parent
CONTROLLERS = ("controller-0", "controller-1", "controller-2")


def one_ca_state(inv: inventory.Inventory, root: Path) -> PkiState:
    """The PKI of a cluster made before etcd had a CA of its own: etcd certificates from the cluster CA."""
    state = PkiState(root)
    jumpbox.generate(inv, state)
    ca_cert, ca_key = pki.read_cert(state.cert("ca")), pki.read_key(state.key("ca"))
    for spec in pki.catalogue(inv):
        if spec.issuer == pki.ETCD_CA_NAME and not spec.is_ca:
            old = dataclasses.replace(spec, issuer="ca")
            key = pki.read_key(state.key(spec.name))
            state.cert(spec.name).write_bytes(pki.cert_pem(pki.issue(old, key, inv, datetime.now(UTC), ca_cert,
                                                                     ca_key)))
    for name in (pki.ETCD_CA_NAME, pki.APISERVER_ETCD_CLIENT):
        state.cert(name).unlink()
        state.key(name).unlink()
    return state


def deploy_etcd(inv, state, cluster: FakeCluster, monkeypatch, trusted: str) -> None:
    """etcd as the one-CA hardway deployed it: its CA file holds ``trusted`` (the cluster CA)."""
    monkeypatch.setattr(etcd_files, "ETCD_CA_NAME", trusted)
    for c in inv.controllers:
        files = plan.chapter_files(inv, c, state, "etcd")
        deploy.install(cluster.connector(inv, c), files)
        node = cluster[c.name]
        node.services["etcd"] = FakeService(True, node.tick())
    FakeEtcd(inv, cluster).bootstrap()  # members answer as real ones would
    monkeypatch.undo()


@pytest.fixture
def one_ca(tmp_path: Path, monkeypatch):
    inv = inventory.load(ROOT / "inventory" / "sample.yaml")
    state = one_ca_state(inv, tmp_path / "pki")
    cluster = FakeCluster()
    deploy_etcd(inv, state, cluster, monkeypatch, "ca")
    for n in cluster.nodes.values():
        n.commands.clear(), n.events.clear()
    cluster.log.clear()
    return inv, state, cluster


def ca_file(cluster: FakeCluster, node: str) -> list[str]:
    return etcd_trust.split_pems(cluster[node].files[etcd_files.CA].data.decode())


def running_config(cluster: FakeCluster, node: str) -> tuple[set[str], x509.Name]:
    """What a member runs with once (re)started: the CAs it trusts, the issuer of the cert it presents."""
    cert = x509.load_pem_x509_certificate(cluster[node].files[etcd_files.CERT].data)
    return set(ca_file(cluster, node)), cert.issuer


def everyone_trusts_everyone(running: dict[str, tuple[set[str], x509.Name]]) -> bool:
    for _, issuer in running.values():
        for trusted, _ in running.values():
            if not any(x509.load_pem_x509_certificate(ca.encode()).subject == issuer for ca in trusted):
                return False
    return True


def test_a_one_ca_cluster_moves_to_the_etcd_ca_trusting_both_while_it_rolls(one_ca, monkeypatch) -> None:
    inv, state, cluster = one_ca
    from hardway.chapters.etcd import CHAPTER as ETCD

    running = {c: running_config(cluster, c) for c in CONTROLLERS}
    held: list[bool] = []
    real_restart = type(ETCD).restart

    def restart(self, ctx, node, unit) -> None:  # a restarted member runs with what its disk holds now
        real_restart(self, ctx, node, unit)
        running[node.name] = running_config(cluster, node.name)
        held.append(everyone_trusts_everyone(running))

    monkeypatch.setattr(type(ETCD), "restart", restart)
    cluster_ca = state.cert("ca").read_text()
    the_plan = rotate.plan_rotation(inv, state, connector=cluster.connector, progress=QUIET)
    text = the_plan.format()
    assert "etcd moves to its CA first, trusting both CAs while it rolls:" in text
    assert "1. etcd trusts the old and the new CA: controller-0, controller-1, controller-2; restart etcd" in text
    assert "2. etcd members present certificates from the new CA: controller-0, controller-1, controller-2" in text
    assert "3. the push below: the old CA is no longer trusted" in text

    report = rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    etcd_ca = state.cert("etcd-ca").read_text()
    assert etcd_ca != cluster_ca
    log = cluster.log
    bundles = [i for i, e in enumerate(log) if e.endswith(": push")]
    restarts = [e for e in log if "restart etcd" in e]
    # three rounds of one-at-a-time restarts: trust both, new member certs, drop the old CA
    assert restarts == [f"{c}: restart etcd" for c in CONTROLLERS] * 3, restarts
    assert len(bundles) == 9
    assert held == [True] * 9, f"a running member presented a certificate another did not trust: {held}"
    assert report.restarted[:6] == [("etcd", c) for c in CONTROLLERS] * 2
    for c in CONTROLLERS:
        assert ca_file(cluster, c) == [etcd_ca], "the old CA is dropped at the end"
        member = cluster[c].files[etcd_files.CERT].data
        assert member == state.cert(f"etcd-{c}").read_bytes()
        assert pki.read_cert(state.cert(f"etcd-{c}")).issuer == pki.read_cert(state.cert("etcd-ca")).subject
    # and once done, there is nothing left to roll
    cluster.log.clear()
    again = rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    assert again.restarted == [] and not [e for e in cluster.log if e.endswith(": push")]


def test_an_interrupted_roll_resumes_where_it_stopped(one_ca, monkeypatch) -> None:
    inv, state, cluster = one_ca
    real = etcd_trust.roll

    def stop_after_the_first_step(ctx, roll):
        roll.steps = roll.steps[:1]
        return real(ctx, roll)

    monkeypatch.setattr(etcd_trust, "roll", stop_after_the_first_step)
    monkeypatch.setattr(rotate, "_plan_nodes", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    monkeypatch.undo()
    assert all(len(ca_file(cluster, c)) == 2 for c in CONTROLLERS), "the bundle is in place"
    cluster.log.clear()
    rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    restarts = [e for e in cluster.log if "restart etcd" in e]
    assert restarts == [f"{c}: restart etcd" for c in CONTROLLERS] * 2, "step 1 is not repeated"
    assert all(ca_file(cluster, c) == [state.cert("etcd-ca").read_text()] for c in CONTROLLERS)


def test_a_new_etcd_ca_with_apiservers_running_puts_them_on_the_bundle_before_members_move(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """After `invoke pki --rotate-ca` on a cluster whose control plane runs: the apiservers trust both
    etcd CAs and get their new etcd client certificate before any member presents a new certificate."""
    inv = inventory.load(ROOT / "inventory" / "sample.yaml")
    state = PkiState(tmp_path / "pki")
    jumpbox.generate(inv, state)
    old_state = PkiState(tmp_path / "old")
    shutil.copytree(state.root, old_state.root)
    cluster = FakeCluster()
    for c in inv.controllers:  # etcd and the control plane, as deployed with the old CAs
        files = plan.node_files(inv, c, old_state, chapters=("etcd", "control-plane"))
        deploy.install(cluster.connector(inv, c), files)
        node = cluster[c.name]
        node.services.update({s: FakeService(True, node.tick()) for f in files for s in f.services})
        cp_fakes.controller(node)
    FakeEtcd(inv, cluster).bootstrap()  # etcd's answers, as the etcd tests give them
    lb = inv.loadbalancers[0]
    deploy.install(cluster.connector(inv, lb), plan.node_files(inv, lb, old_state))
    cluster[lb.name].services[LB_UNIT] = FakeService(True, 1)
    haproxy = cp_fakes.HAProxy(cluster, cluster[lb.name], inv)
    cp_fakes.see_through(monkeypatch, cluster, inv)
    jumpbox.generate(inv, state, rotate_ca=True)
    cluster.log.clear()
    rotate.rotate(inv, state, connector=cluster.connector, progress=QUIET)
    log = cluster.log
    api_restarts = [i for i, e in enumerate(log) if e.endswith("restart kube-apiserver")]
    etcd_restarts = [i for i, e in enumerate(log) if e.endswith("restart etcd")]
    assert len(etcd_restarts) == 9 and len(api_restarts) >= 6
    assert etcd_restarts[2] < api_restarts[0] and api_restarts[2] < etcd_restarts[3], \
        "trust both (etcd), then the apiservers, then the new member certificates"
    assert all(s == "ready" for s in haproxy.admin.values())
    new_etcd_ca = state.cert("etcd-ca").read_text()
    for c in CONTROLLERS:
        assert cluster[c].files[cp_files.ETCD_CA].data.decode() == new_etcd_ca
        assert cluster[c].files[cp_files.ETCD_CLIENT_CERT].data == state.cert("apiserver-etcd-client").read_bytes()
