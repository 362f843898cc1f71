"""`verify --chapter workers` judged on recorded facts: the apiserver→kubelet path as curl saw it from a
lab controller, journal signatures, the CNI config, the cgroup drivers and the resolver the kubelet
really hands pods. Each check fails on the broken case and passes on the healthy one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import signatures as sg
from hardway.chapters.workers import verify as wv
from hardway.checks import FAIL, OK
from tests.workers_fakes import recorded

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
W0 = INV.workers[0]
BRIDGE = json.dumps({"cniVersion": "1.0.0", "name": "bridge", "type": "bridge", "bridge": "cni0",
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": str(W0.pod_cidr)}]]}})
LOOPBACK = '{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}'
BINS = ["bridge", "host-local", "loopback"]


def probe(case: str) -> tuple[int, str]:
    return wv.kubelet_probe(W0).parse(recorded("kubelet_probe", case))


@pytest.mark.parametrize(("case", "status", "words"), [
    ("standin-ok", OK, "TLS verified for 10.240.0.20, client certificate accepted, /healthz 200 (stand-in kubelet)"),
    ("san-missing", FAIL, "the kubelet's serving certificate does not carry 10.240.0.20"),
    ("refused", FAIL, "connection refused"),
    ("timeout", FAIL, "dial tcp 10.240.0.20:10250: i/o timeout"),
    ("forbidden", FAIL, "Forbidden (user=kubernetes … nodes/proxy)"),
])
def test_the_apiserver_to_kubelet_probe_names_each_outcome(case: str, status: str, words: str) -> None:
    res = wv.judge_kubelet_path(INV, "controller-0", W0, probe(case))
    assert res.status == status and words in res.detail, res
    assert res.detail.startswith("controller-0 → 10.240.0.20:10250: ")
    if status == FAIL:
        assert res.hint


def test_the_san_hint_is_the_repair_that_works() -> None:
    res = wv.judge_kubelet_path(INV, "controller-0", W0, probe("san-missing"))
    assert "invoke bootstrap-workers" in res.hint and "invoke pki" in res.hint


def test_cni_config_valid_missing_wrong_subnet_missing_plugin_and_broken_json() -> None:
    good = {wf.CNI_BRIDGE: BRIDGE, wf.CNI_LOOPBACK: LOOPBACK}
    assert [s for s, _, _ in wv.judge_cni(W0, good, BINS)] == [OK, OK]
    assert wv.judge_cni(W0, {}, BINS)[0][:2] == (FAIL, "no CNI config in /etc/cni/net.d: pods get no network "
                                                       "(`cni plugin not initialized`)")
    wrong = BRIDGE.replace(str(W0.pod_cidr), "10.200.9.0/24")
    assert "hands out 10.200.9.0/24, not worker-0's pod_cidr 10.200.0.0/24" in wv.judge_cni(W0, {wf.CNI_BRIDGE: wrong},
                                                                                           BINS)[0][1]
    assert "needs plugin(s) host-local" in wv.judge_cni(W0, good, ["bridge", "loopback"])[0][1]
    assert "is not valid JSON" in wv.judge_cni(W0, {wf.CNI_BRIDGE: BRIDGE[:-2]}, BINS)[0][1]


def test_the_recorded_cni_signature_fails_until_the_cni_check_passes_again() -> None:
    lines = sg.journal("containerd").parse(recorded("journal_lines", "cni-missing"))
    assert any("cni plugin not initialized" in ln.text for ln in lines)
    seen = sg.matches({"containerd": lines}, passing=set())
    assert [m.signature.sources for m in seen] == [("containerd", "kubelet")]
    assert "re-run `invoke bootstrap-workers`" in seen[0].signature.fix
    assert sg.matches({"containerd": lines}, passing={"cni"}) == []  # the config is back: history


@pytest.mark.parametrize(("source", "line", "cause"), [
    ("kube-proxy", 'E1122 proxier.go:123] "Missing br-netfilter module or unset sysctl br-nf-call-iptables; proxy '
                   'may not work as intended"', "br_netfilter"),
    ("coredns", "2024-05-01T10:00:00.1Z stdout F [FATAL] plugin/loop: Loop (127.0.0.1:41771 -> :53) detected for "
                "zone \".\"", "CoreDNS forwards to itself"),
    ("kubelet", 'E1122 run.go:72] "command failed" err="failed to run Kubelet: running with swap on is not '
                'supported, please disable swap"', "swap is on"),
    ("kube-apiserver", "Error: dial tcp 10.240.0.21:10250: i/o timeout", "cannot reach a kubelet"),
    ("kube-apiserver", "Forbidden (user=kubernetes, verb=create, resource=nodes, subresource=proxy)", "RBAC"),
])
def test_each_journal_signature_maps_to_its_cause(source: str, line: str, cause: str) -> None:
    seen = sg.matches({source: [sg.Line(1.0, line)]})
    assert len(seen) == 1 and cause in seen[0].signature.cause and seen[0].signature.fix


def facts(**changes) -> wv.WorkerFacts:
    from tests.test_workers_node import lab_node

    f = wv.WorkerFacts(node=lab_node(), active={u: "active" for u in wf.UNITS},
                       health={wf.CONTAINERD: (True, "Server:\n  Version:  1.6.20~ds1"), wf.KUBELET: (True, "ok"),
                               wf.KUBE_PROXY: (True, "{}")}, cri=(True, "ok"),
                       cni={wf.CNI_BRIDGE: BRIDGE, wf.CNI_LOOPBACK: LOOPBACK}, cni_bins=BINS,
                       kubelet_config='cgroupDriver: "systemd"\nresolvConf: "/etc/resolv.conf"\n',
                       containerd_config="    SystemdCgroup = true\n")
    for k, v in changes.items():
        setattr(f, k, v)
    return f


def by_check(results) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r.check, []).append(r)
    return out


def test_a_healthy_worker_has_no_failure() -> None:
    got = by_check(wv.judge_worker(INV, W0, facts(), []))
    assert not [r for rs in got.values() for r in rs if r.status == FAIL]
    assert got["containers"][0].status == "skip" and "skipped: lab" in got["containers"][0].detail


def test_a_kubelet_handed_a_stub_resolver_fails_and_names_the_file_that_fixes_it() -> None:
    f = facts(kubelet_config='cgroupDriver: "systemd"\nresolvConf: "/etc/resolv.conf"\n')
    f.node.resolv_conf = recorded("resolv_conf", "resolved-stub").stdout
    f.node.resolved_upstream = recorded("resolved_upstream", "resolved-upstream").stdout
    (res,) = by_check(wv.judge_worker(INV, W0, f, []))["resolv-conf"]
    assert res.status == FAIL and "127.0.0.53" in res.detail and "plugin/loop" in res.detail
    assert "re-run `invoke bootstrap-workers`: it gives this kubelet resolvConf /run/systemd/resolve/resolv.conf" \
        in res.hint


def test_cgroup_drivers_that_disagree_fail() -> None:
    f = facts(containerd_config="    SystemdCgroup = false\n")
    (res,) = [r for r in by_check(wv.judge_worker(INV, W0, f, []))["cgroup-driver"] if r.status == FAIL]
    assert "kubelet cgroupDriver systemd but containerd SystemdCgroup = false" in res.detail


def test_containerd_down_and_a_kubelet_not_serving_fail_with_their_journal_named() -> None:
    f = facts(active={wf.CONTAINERD: "failed", wf.KUBELET: "active", wf.KUBE_PROXY: "active"},
              health={wf.CONTAINERD: (False, "ctr: failed to dial"), wf.KUBELET: (False, "curl: (7) refused"),
                      wf.KUBE_PROXY: (True, "{}")})
    got = by_check(wv.judge_worker(INV, W0, f, []))
    assert got["containerd"][0].status == FAIL and "journalctl -u containerd" in got["containerd"][0].hint
    assert got["kubelet"][0].status == FAIL and got["kubelet"][0].detail \
        == "kubelet (stand-in) is active, /healthz on :10248: curl: (7) refused"
