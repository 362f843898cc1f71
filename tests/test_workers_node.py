"""The workers chapter's node preflight on recorded facts (tests/data/facts/): parsers, the pure judge,
the kubelet's resolvConf choice and what `--fix` does. Swap and kernel modules are the host's in the
lab, so their broken cases are tested here; sysctls, the resolver and the tools are also broken for
real in tests/test_bootstrap_workers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters.workers import node as wn
from hardway.checks import FAIL, OK, WARN
from hardway.facts import Fact, FactOutput

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "facts"
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
W0 = INV.workers[0]


def recorded(fact: Fact, case: str):
    rc = DATA / fact.name / f"{case}.rc"
    out = FactOutput((DATA / fact.name / f"{case}.txt").read_text(), int(rc.read_text()) if rc.exists() else 0)
    return fact.parse(out)


def lab_node(**changes) -> wn.NodeFacts:
    """A lab worker as recorded after `bootstrap-workers --fix`, with ``changes`` (recorded cases)."""
    f = wn.NodeFacts(swaps=recorded(wn.SWAPS, "lab-none"), fstab=recorded(wn.FSTAB_TEXT, "debian-unconfigured"),
                     sysctls=recorded(wn.SYSCTL_VALUES, "lab-fixed"),
                     br_netfilter=recorded(wn.BR_NETFILTER, "lab-loaded"),
                     resolv_conf=recorded(wn.RESOLV_TEXT, "lab-upstream"),
                     resolved_upstream=recorded(wn.UPSTREAM_TEXT, "absent"),
                     tools=recorded(wn.TOOLS_PRESENT, "all-present"), cgroups=recorded(wn.CGROUPS, "lab-nspawn-v1"))
    for key, (fact, case) in changes.items():
        setattr(f, key, recorded(fact, case))
    return f


def items(f: wn.NodeFacts) -> dict[str, wn.Item]:
    return {i.check: i for i in wn.judge(W0, f)}


def test_the_recorded_lab_node_passes_but_warns_about_cgroup_v1() -> None:
    got = items(lab_node())
    assert {k: v.status for k, v in got.items() if v.status != OK} == {"cgroup-driver": WARN}
    assert got["resolv-conf"].detail == "kubelet resolvConf /etc/resolv.conf: /etc/resolv.conf lists real servers " \
                                       "(10.255.255.53)"


def test_parsers_read_the_recorded_outputs() -> None:
    assert recorded(wn.SWAPS, "two-on") == [wn.Swap("/dev/sda3", "partition", 4194300),
                                              wn.Swap("/swapfile", "file", 2097148)]
    assert recorded(wn.SWAPS, "lab-none") == []
    assert recorded(wn.SYSCTL_VALUES, "both-off") == {wn.BRIDGE_NF: "0", wn.IP_FORWARD: "0"}
    assert recorded(wn.UPSTREAM_TEXT, "absent") is None
    assert recorded(wn.CGROUPS, "lab-nspawn-v1") == wn.Cgroups("tmpfs", "systemd", False)
    assert recorded(wn.TOOLS_PRESENT, "socat-missing") == {"socat": False, "conntrack": True, "ipset": True}


def test_swap_on_fails_names_each_device_and_is_fixable() -> None:
    item = items(lab_node(swaps=(wn.SWAPS, "two-on")))["swap"]
    assert item.status == FAIL and item.fixable
    assert "/dev/sda3 (4095 MiB), /swapfile (2047 MiB)" in item.detail
    assert "running with swap on is not supported" in item.detail
    assert item.hint.startswith("run `invoke bootstrap-workers --fix`")


def test_swap_off_but_in_fstab_warns_it_comes_back_at_boot() -> None:
    item = items(lab_node(fstab=(wn.FSTAB_TEXT, "with-swap")))["swap"]
    assert item.status == WARN and item.fixable and "UUID=a1b2c3d4" in item.detail


def test_br_netfilter_missing_fails_with_the_signature_users_see() -> None:
    got = items(lab_node(br_netfilter=(wn.BR_NETFILTER, "missing")))
    assert got["br-netfilter"].status == FAIL and "Missing br-netfilter module" in got["br-netfilter"].detail


def test_sysctls_off_fail_each_and_say_what_fix_does() -> None:
    got = items(lab_node(sysctls=(wn.SYSCTL_VALUES, "both-off")))
    for key in wn.SYSCTLS:
        item = got[f"sysctl {key}"]
        assert item.status == FAIL and item.fixable and item.detail.startswith(f"{key} = 0")
        assert wn.SYSCTL_FILE in item.hint


def test_a_missing_tool_is_not_fixable_and_names_the_package() -> None:
    item = items(lab_node(tools=(wn.TOOLS_PRESENT, "socat-missing")))["tools"]
    assert item.status == FAIL and not item.fixable
    assert "unable to do port forwarding: socat not found" in item.detail
    assert "apt-get install socat" in item.hint


def test_cgroup_v2_with_systemd_is_ok_and_another_init_fails() -> None:
    assert items(lab_node())["cgroup-driver"].status == WARN
    f = lab_node()
    f.cgroups = wn.Cgroups("cgroup2fs", "systemd", True)
    assert items(f)["cgroup-driver"].status == OK
    f.cgroups = wn.Cgroups("cgroup2fs", "openrc-init", True)
    assert items(f)["cgroup-driver"].status == FAIL


# --- the kubelet's resolvConf ---------------------------------------------------------------------


def test_resolv_conf_with_real_servers_is_used_as_it_is() -> None:
    assert wn.resolv_conf_choice(lab_node())[0] == "/etc/resolv.conf"


def test_a_stub_resolver_sends_the_kubelet_to_systemd_resolveds_upstream_list() -> None:
    f = lab_node(resolv_conf=(wn.RESOLV_TEXT, "resolved-stub"),
                 resolved_upstream=(wn.UPSTREAM_TEXT, "resolved-upstream"))
    path, why = wn.resolv_conf_choice(f)
    assert path == "/run/systemd/resolve/resolv.conf"
    assert "127.0.0.53" in why and "10.78.41.1" in why
    assert items(f)["resolv-conf"].status == OK


def test_a_stub_resolver_without_an_upstream_list_fails_naming_the_coredns_loop() -> None:
    f = lab_node(resolv_conf=(wn.RESOLV_TEXT, "resolved-stub"))
    assert wn.resolv_conf_choice(f)[0] is None
    item = items(f)["resolv-conf"]
    assert item.status == FAIL and not item.fixable and "plugin/loop" in item.detail


@pytest.mark.parametrize("text", ["", "search lan\n", "nameserver 127.0.0.1\n", "nameserver ::1\n"])
def test_no_real_server_at_all_is_the_same_loop(text: str) -> None:
    f = lab_node()
    f.resolv_conf = text
    assert wn.resolv_conf_choice(f)[0] is None


# --- --fix --------------------------------------------------------------------------------------


def test_fix_plan_for_a_healthy_node_is_empty() -> None:
    f = lab_node()
    plan = wn.fix_plan(wn.judge(W0, f), f)
    assert plan.files == [] and plan.steps == []


def test_fix_plan_swaps_off_and_comments_fstab_keeping_every_other_line() -> None:
    f = lab_node(swaps=(wn.SWAPS, "two-on"), fstab=(wn.FSTAB_TEXT, "with-swap"))
    plan = wn.fix_plan(wn.judge(W0, f), f)
    assert [s.command for s in plan.steps] == ["swapoff -- /dev/sda3", "swapoff -- /swapfile", "true"]
    (fstab,) = plan.files
    assert fstab.path == "/etc/fstab" and fstab.chapter == "workers"
    before, after = f.fstab.splitlines(), fstab.content.decode().splitlines()
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if old.split()[2:3] == ["swap"]:
            assert new == wn.FIX_MARK + old  # commented, not deleted
        else:
            assert new == old
    assert wn.active_swap_lines(fstab.content.decode()) == []


def test_fix_plan_loads_the_module_before_it_loads_the_sysctls() -> None:
    f = lab_node(br_netfilter=(wn.BR_NETFILTER, "missing"), sysctls=(wn.SYSCTL_VALUES, "both-off"))
    plan = wn.fix_plan(wn.judge(W0, f), f)
    assert [s.command for s in plan.steps] == ["modprobe br_netfilter", f"sysctl -q -p {wn.SYSCTL_FILE}"]
    files = {x.path: x.content.decode() for x in plan.files}
    assert "br_netfilter" in files[wn.MODULES_FILE].splitlines()
    for key in wn.SYSCTLS:
        assert f"{key} = 1" in files[wn.SYSCTL_FILE].splitlines()
    assert "net.ipv4.ip_forward=1" in plan.steps[1].what and wn.SYSCTL_FILE in plan.steps[1].what


def test_fix_plan_never_repairs_what_is_not_fixable() -> None:
    f = lab_node(tools=(wn.TOOLS_PRESENT, "socat-missing"), resolv_conf=(wn.RESOLV_TEXT, "resolved-stub"))
    plan = wn.fix_plan(wn.judge(W0, f), f)
    assert plan.files == [] and plan.steps == []
