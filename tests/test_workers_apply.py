"""The workers chapter's apply path (preflight, --fix, push, start, wait) over the fact-level fake.

The same paths run against real containerd and the stand-ins in tests/test_bootstrap_workers.py (lab).
"""

from __future__ import annotations

import pytest
import yaml

from hardway.chapters import Context
from hardway.chapters.workers import CHAPTER as WORKERS
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import node as wn
from hardway.deploy import RECORD
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.fakes import FakeCluster, FakeFile
from tests.workers_fakes import cluster_for, lab_like, recorded


@pytest.fixture
def lab(tmp_path):
    return lab_like(tmp_path)


def apply(inv, state, cluster: FakeCluster, **kw):
    return WORKERS.apply(Context(inv, state, connector=cluster.connector, progress=QUIET, **kw))


def push_of(cluster: FakeCluster, name: str) -> str:
    return next(cmd for cmd in cluster[name].commands if cmd.startswith("set -e;"))


def clear(cluster: FakeCluster) -> None:
    for node in cluster.nodes.values():
        node.commands.clear(), node.uploads.clear(), node.starts.clear(), node.restarts.clear()


def test_fresh_workers_get_everything_and_start_containerd_kubelet_kube_proxy_in_one_push(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    report = apply(inv, state, cluster)
    assert report.started == {w.name: ["containerd", "kubelet", "kube-proxy"] for w in inv.workers}
    assert not [r for r in report.results if r.status == "fail"], [r for r in report.results if r.status == "fail"]
    for w in inv.workers:
        push = push_of(cluster, w.name)
        assert push.endswith("systemctl start containerd kubelet kube-proxy"), push  # containerd first
        node = cluster[w.name]
        assert node.files["/usr/local/bin/kubelet"].data.startswith(b"#!/usr/bin/python3\n# kubelet v1.32.3 stand-in")
        kubelet = yaml.safe_load(node.files[wf.KUBELET_CONFIG].data)
        assert kubelet["resolvConf"] == "/etc/resolv.conf" and kubelet["podCIDR"] == str(w.pod_cidr)
        assert b"version = 2" in node.files["/etc/containerd/config.toml"].data  # containerd 1.6
        assert node.events.index("start containerd") < node.events.index("gather kubelet_healthz")
    assert {r.check for r in report.results} >= {"containerd", "cri-plugin", "kubelet", "kube-proxy", "cni",
                                                  "apiserver-to-kubelet", "journal", "files", "swap"}


def test_rerun_writes_nothing_restarts_nothing_runs_nothing(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    apply(inv, state, cluster)
    clear(cluster)
    report = apply(inv, state, cluster)
    assert report.written == {w.name: [] for w in inv.workers}
    assert report.started == {} and report.restarted == {} and report.steps == {}
    assert report.summary() == "workers: nothing changed: 0 files written, 0 restarts"
    for node in cluster.nodes.values():
        assert node.commands == [] and node.uploads == []


def test_a_fixable_problem_stops_preflight_and_nothing_changes_anywhere(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    for fact, case in (("swaps", "two-on"), ("fstab", "with-swap")):
        cluster["worker-1"].facts[fact] = recorded(fact, case)
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: worker-1: swap is on: /dev/sda3 "
                                           r".*run `invoke bootstrap-workers --fix`"):
        apply(inv, state, cluster)
    for node in cluster.nodes.values():
        assert node.commands == [] and node.uploads == []


def test_fix_persists_each_repair_before_services_start_and_says_so(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    node = cluster["worker-0"]
    for fact, case in (("swaps", "two-on"), ("fstab", "with-swap"), ("br_netfilter", "missing"),
                       ("sysctls", "both-off")):
        node.facts[fact] = recorded(fact, case)
    original = recorded("fstab", "with-swap").stdout.encode()
    node.files["/etc/fstab"] = FakeFile(original)  # the node's own, not hardway's
    report = apply(inv, state, cluster, fix=True)
    push = push_of(cluster, "worker-0")
    order = [push.index(c) for c in ("swapoff -- /dev/sda3", "swapoff -- /swapfile", "modprobe br_netfilter",
                                     f"sysctl -q -p {wn.SYSCTL_FILE}", "systemctl start containerd")]
    assert order == sorted(order)
    assert set(report.written["worker-0"]) >= {"/etc/fstab", wn.MODULES_FILE, wn.SYSCTL_FILE}
    fstab = node.files["/etc/fstab"].data.decode()
    assert fstab.count(wn.FIX_MARK) == 2 and wn.active_swap_lines(fstab) == []
    backups = [p for p in node.files if p.startswith("/etc/fstab.hardway-orig-")]
    assert len(backups) == 1 and node.files[backups[0]].data == original
    record = yaml.safe_load(node.files[RECORD].data)["files"]
    assert {record[p]["chapter"] for p in ("/etc/fstab", wn.MODULES_FILE, wn.SYSCTL_FILE)} == {"workers"}
    said = " | ".join(report.steps["worker-0"])
    assert "fixed swap: swapoff /dev/sda3" in said and "fixed br_netfilter" in said and "net.ipv4.ip_forward=1" in said
    assert "fixed" in report.summary() and "worker-1" not in report.steps  # worker-1 needed nothing
    assert not [r for r in report.results if r.status == "fail" and r.node == "worker-1"]


def test_fix_on_a_healthy_cluster_changes_nothing(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    apply(inv, state, cluster)
    clear(cluster)
    report = apply(inv, state, cluster, fix=True)
    assert report.steps == {} and report.written == {w.name: [] for w in inv.workers}


def test_a_stub_resolver_gives_that_kubelet_systemd_resolveds_upstream_list(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    for fact, case in (("resolv_conf", "resolved-stub"), ("resolved_upstream", "resolved-upstream")):
        cluster["worker-1"].facts[fact] = recorded(fact, case)
    report = apply(inv, state, cluster)
    confs = {w.name: yaml.safe_load(cluster[w.name].files[wf.KUBELET_CONFIG].data)["resolvConf"] for w in inv.workers}
    assert confs == {"worker-0": "/etc/resolv.conf", "worker-1": "/run/systemd/resolve/resolv.conf"}
    assert next(r for r in report.results if r.check == "resolv-conf" and r.node == "worker-1").status == "ok"
    clear(cluster)
    assert apply(inv, state, cluster).written == {w.name: [] for w in inv.workers}  # and it stays so


def test_a_stub_resolver_without_upstream_stops_preflight(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    cluster["worker-0"].facts["resolv_conf"] = recorded("resolv_conf", "resolved-stub")
    with pytest.raises(HardwayError, match=r"worker-0: no file lists real DNS servers for pods: /etc/resolv.conf "
                                           r"lists 127.0.0.53"):
        apply(inv, state, cluster, fix=True)  # not something --fix repairs


def test_missing_runtime_binaries_are_named_before_any_node_is_asked(tmp_path) -> None:
    inv, state = lab_like(tmp_path, omit=("containerd",))
    cluster = cluster_for(inv, state)
    with pytest.raises(HardwayError, match=r"binaries.containerd: sample.yaml gives no containerd binary"):
        apply(inv, state, cluster)
    assert all(node.asked == [] for node in cluster.nodes.values())


def test_containerd_versions_that_disagree_stop_preflight(tmp_path, monkeypatch) -> None:
    inv, state = lab_like(tmp_path)
    monkeypatch.setattr(wf, "_ask_binary", lambda path: "2.1.1")  # what the binary says
    cluster = cluster_for(inv, state)
    with pytest.raises(HardwayError, match=r"versions.containerd says 1.6.20 but the containerd binary says 2.1.1"):
        apply(inv, state, cluster)


def test_containerd_schema_follows_the_version() -> None:
    assert [wf.config_schema(v) for v in ("1.6.20", "1.7.27", "2.0.0", "2.1.0", None)] == [2, 2, 3, 3, 3]


def test_a_failed_kubelet_ends_the_wait_at_once_naming_the_stand_in(lab) -> None:
    inv, state = lab
    cluster = cluster_for(inv, state)
    cluster["worker-0"].facts["unit_states"] = lambda f, n: "\n".join(
        f"Id={u}.service\nActiveState={'failed' if u == 'kubelet' and n.starts else 'inactive'}\n"
        "ActiveEnterTimestamp=\nUnitFileState=enabled\nMainPID=0\n" for u in f.args) + "\n"
    with pytest.raises(HardwayError, match=r"^worker-0: kubelet \(stand-in\) failed to start; see `journalctl -u "
                                           r"kubelet`"):
        apply(inv, state, cluster, timeout=3)


def test_a_kubernetes_version_without_stand_in_data_plans_but_stops_preflight_naming_the_field(tmp_path) -> None:
    import dataclasses
    from types import MappingProxyType

    inv, state = lab_like(tmp_path)
    inv = dataclasses.replace(inv, versions=MappingProxyType({**inv.versions, "kubernetes": "1.7.0"}))
    cluster = cluster_for(inv, state)
    with pytest.raises(HardwayError, match=r"versions.kubernetes: kubelet and kube-proxy have no binary under "
                                           r"binaries, and their stand-ins exist for Kubernetes 1.32 only \(not "
                                           r"1.7.0\).*pin versions.kubernetes to '1.32.3'"):
        apply(inv, state, cluster)
    assert all(node.asked == [] for node in cluster.nodes.values())
