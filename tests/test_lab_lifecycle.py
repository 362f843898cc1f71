"""A lab's life on the host: every machine in its own cgroup, up hands over only nodes whose
systemd is ``running``, down returns only when nothing of the lab is left (not even a zombie),
and crashed or killed runs are cleaned up. Pure parts first; the real lab (marker ``lab``) after."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardway import lab as lab_lib
from hardway.errors import HardwayError
from hardway.lab import cgroups
from hardway.lab import image as lab_image
from hardway.lab import machine as lab_machine
from hardway.lab import probes as lab_probes
from hardway.lab.addresses import owned_by
from tests.labtools import ROOT, connect, leftovers, machine_processes, run, still_in_process_table

# --------------------------------------------------------------------------------------------
# Pure parts

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 70 0:38 / /mnt/again rw,relatime - cgroup2 cgroup2 rw
"""


def test_machine_cgroups_go_where_systemd_keeps_its_own() -> None:
    assert cgroups.systemd_hierarchies(MOUNTINFO) == [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")]
    pure_v2 = "25 23 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroups.systemd_hierarchies(pure_v2) == [Path("/sys/fs/cgroup")]
    assert cgroups.systemd_hierarchies("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n") == []


def test_nspawn_is_started_from_inside_the_node_cgroups(tmp_path: Path) -> None:
    procs = [tmp_path / "a" / "cgroup.procs", tmp_path / "b" / "cgroup.procs"]
    for f in procs:
        f.parent.mkdir()
    argv = cgroups.enter_command(procs, ["sh", "-c", "echo started"])
    res = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert res.stdout == "started\n"
    assert [f.read_text() for f in procs] == ["0\n", "0\n"]  # "0": the writing shell moves itself
    blocked = cgroups.enter_command([tmp_path / "missing" / "cgroup.procs"], ["echo", "must not run"])
    res = subprocess.run(blocked, capture_output=True, text=True)
    assert res.returncode == 125 and "must not run" not in res.stdout


def test_cgroup_and_netns_names_belong_to_one_lab() -> None:
    assert owned_by("lab", "hw.lab.controller-0")
    for other in ("hw.lab2.controller-0", "hw.lab.", "hw.lab.a.b", "hw.la.b", "payload", "hw-lab-0"):
        assert not owned_by("lab", other), other


def test_a_machine_is_its_oldest_nspawn_not_a_child_that_carries_its_command_line(monkeypatch) -> None:
    """nspawn forks children that show its command line until they exec; one may have a parent that
    already exited (a zombie: no command line). Picking such a child made `lab.up` report "its machine
    exited" about one time in fifty."""
    p = lab_lib.layout("lab", 1, 0)
    argv = lab_lib.nspawn_command(p, p.nodes[0])
    table = {  # pid: (parent, command line, start time)
        500: (1, argv, 100),  # the machine's nspawn
        501: (500, argv, 101),  # its child before exec
        503: (502, argv, 101),  # a grandchild whose parent (502, a zombie) shows no command line
        502: (500, [], 101),
        900: (1, ["sshd"], 5),
    }
    monkeypatch.setattr(lab_probes, "all_pids", lambda: sorted(table))
    monkeypatch.setattr(lab_probes, "proc_argv", lambda pid: table[pid][1])
    monkeypatch.setattr(lab_probes, "alive", lambda pid: pid != 502)
    monkeypatch.setattr(lab_probes, "parent_pid", lambda pid: table[pid][0])
    monkeypatch.setattr(lab_probes, "start_time", lambda pid: table[pid][2])
    assert lab_probes.nspawn_processes(p) == {"controller-0": 500}


def test_removal_summary_says_what_went_and_why_something_was_killed() -> None:
    assert lab_machine.Removal("t1").summary() == "lab t1: nothing to remove"
    r = lab_machine.Removal("t1", machines=["controller-0", "worker-0"], killed=["worker-0"], orphaned=[],
                            mounts=["/m0", "/m1"], netns=["hw.t1.controller-0"], links=["hw-t1", "hw-t1-0"],
                            cgroups=["/sys/fs/cgroup/unified/hw.t1.controller-0"], state_dir=Path("/s"))
    assert r.summary() == ("lab t1: removed 2 machines, 2 mounts, 1 netns, 2 links, 1 cgroup, state dir "
                           "(killed, as they did not power off in time: worker-0)")


# --------------------------------------------------------------------------------------------
# The real lab

BOOTS = int(os.environ.get("HARDWAY_LAB_BOOTS", "20"))


@pytest.mark.lab
def test_twenty_boots_in_a_row_every_node_running_and_nothing_left(lab_factory) -> None:
    """up → lab.status (every node running and SSH ok) → down → nothing of the lab on the host,
    not even a process in the process table; BOOTS times (20) with one small lab."""
    name, subnet = lab_factory.reserve()
    ups, downs = [], []
    for i in range(BOOTS):
        started = time.monotonic()
        booted = lab_lib.up(name, 3, 0, str(subnet), report=lambda _m: None)
        ups.append(time.monotonic() - started)
        rows = lab_lib.status(name)
        assert all(r.ok for r in rows), f"boot {i + 1}: right after lab.up:\n{lab_lib.format_status(rows)}"
        processes = machine_processes(booted)
        assert len(processes) > 3 * 4, processes  # nspawn, systemd, journald, sshd, ... per node
        started = time.monotonic()
        lab_factory.down(name)
        downs.append(time.monotonic() - started)
        assert still_in_process_table(processes) == [], f"boot {i + 1}: after lab.down"
        assert leftovers(name, subnet) == [], f"boot {i + 1}: after lab.down"
    print(f"\n{BOOTS} boots of 3 nodes: up {sum(ups) / len(ups):.2f} s, down {sum(downs) / len(downs):.2f} s "
          f"on average (max {max(ups):.2f} s, {max(downs):.2f} s)")


@pytest.mark.lab
def test_nodes_do_not_share_cgroups(lab_factory) -> None:
    """Two nodes start and stop the same unit at once, 60 times. In one shared cgroup tree, one node
    removes the unit's cgroup while the other attaches to it (219/CGROUP): a degraded boot."""
    small = lab_factory(2, 0)
    try:
        for node, pid in small.pids().items():
            init = lab_probes.init_pid(pid)
            assert f":/hw.{small.name}.{node}/payload/" in Path(f"/proc/{init}/cgroup").read_text()
        script = ("f=0; for i in $(seq 60); do systemd-run --quiet --unit=hw-same-unit --wait --collect true "
                  "|| f=$((f+1)); done; echo $f")
        procs = [subprocess.Popen(["nsenter", f"--target={lab_probes.init_pid(pid)}", "--all", "sh", "-c",
                                   script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for pid in small.pids().values()]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [out.strip() for out, _ in outs] == ["0", "0"], outs
    finally:
        lab_factory.down(small.name)


@pytest.mark.lab
def test_up_refuses_to_hand_over_a_degraded_node(lab_factory, monkeypatch) -> None:
    """Break one node (a unit that fails at boot): lab.up says which node and which unit."""
    name, subnet = lab_factory.reserve()
    real_prepare = lab_image.prepare_node

    def prepare_with_a_failing_unit(p, node, image, key):
        fresh = not (p.node_dir(node) / "prepared").exists()
        real_prepare(p, node, image, key)
        if fresh and node.name == "controller-1":
            lab_image._put(p.upper(node), "etc/systemd/system/hw-broken.service",
                           "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo broken on purpose; exit 3'\n")
            lab_image._put(p.upper(node), "etc/systemd/system/multi-user.target.wants/hw-broken.service",
                           lab_image.Symlink("/etc/systemd/system/hw-broken.service"))

    monkeypatch.setattr(lab_image, "prepare_node", prepare_with_a_failing_unit)
    with pytest.raises(HardwayError) as err:
        lab_lib.up(name, 2, 0, str(subnet), report=lambda _m: None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"lab {name}: node controller-1: systemd is degraded, failed: hw-broken.service "
                              "(hw-broken.service: "), message
    assert "lab.down" in message
    rows = {r.node: r for r in lab_lib.status(name)}
    assert rows["controller-1"].systemd == "degraded" and rows["controller-0"].ok
    lab_factory.down(name)


@pytest.mark.lab
def test_down_kills_a_machine_whose_nspawn_was_killed(lab_factory) -> None:
    """SIGKILL of systemd-nspawn leaves the machine's systemd running, orphaned: down finds it in
    the node's cgroup, kills it and waits until it is gone."""
    small = lab_factory(2, 0)
    processes = machine_processes(small)
    victim = small.pids()["controller-1"]
    init = lab_probes.init_pid(victim)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while lab_probes.alive(victim) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab_probes.alive(init), "the machine's systemd outlives its nspawn"
    said: list[str] = []
    removed = lab_lib.down(small.name, report=said.append)
    assert removed.orphaned == ["controller-1"] and removed.killed == []
    assert "killed, as their systemd-nspawn was gone: controller-1" in said[-1]
    assert still_in_process_table(processes) == []
    assert leftovers(small.name, small.layout.subnet) == []


@pytest.mark.lab
def test_down_removes_everything(lab_factory) -> None:
    small = lab_factory(1, 0)
    assert leftovers(small.name)  # the check sees a live lab
    lab_factory.down(small.name)
    assert leftovers(small.name, small.layout.subnet) == []
    said: list[str] = []
    assert not lab_lib.down(small.name, report=said.append)
    assert said == [f"lab {small.name}: nothing to remove"]


def kill_lab_up_halfway(name: str, subnet: ipaddress.IPv4Network) -> None:
    """Run lab.up (1 controller + 1 worker) in a subprocess and SIGKILL it once a machine runs."""
    script = f"from hardway import lab; lab.up({name!r}, 1, 1, {str(subnet)!r})"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(s.startswith("process") for s in leftovers(name)):
            assert proc.poll() is None, "lab.up finished before it could be killed"
            assert time.monotonic() < deadline, "no node started within 60 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    found = leftovers(name)
    assert any(s.startswith("process") for s in found) and any(s.startswith("mount") for s in found), found


@pytest.mark.lab
def test_down_cleans_up_after_lab_up_was_killed_halfway(lab_factory) -> None:
    name, subnet = lab_factory.reserve()
    kill_lab_up_halfway(name, subnet)
    started = time.monotonic()
    lab_factory.down(name)
    assert leftovers(name, subnet) == []
    assert time.monotonic() - started < 15, "a machine killed early in its boot was not powered off"


@pytest.mark.lab
def test_up_after_a_killed_up_finishes_the_lab(lab_factory) -> None:
    name, subnet = lab_factory.reserve()
    kill_lab_up_halfway(name, subnet)
    resumed = lab_lib.up(name, 1, 1, str(subnet), report=lambda _: None)
    for node in ("controller-0", "worker-0"):
        with connect(resumed, node) as c:
            assert run(c, "hostname") == node
            assert run(c, "systemctl is-system-running") == "running"
    lab_factory.down(name)
    assert leftovers(name, subnet) == []


@pytest.mark.lab
@pytest.mark.parametrize("failure", [OSError(5, "Input/output error", "/sys/class/net/x"), KeyboardInterrupt()])
def test_a_fresh_up_that_crashes_midway_leaves_nothing(lab_factory, monkeypatch, failure: BaseException) -> None:
    name, subnet = lab_factory.reserve()
    real_start = lab_machine.start

    def start_then_fail(p, node):  # the first machine is up, netns and mounts exist: then it breaks
        real_start(p, node)
        raise failure

    monkeypatch.setattr(lab_machine, "start", start_then_fail)
    expected = HardwayError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as err:
        lab_lib.up(name, 2, 0, str(subnet), report=lambda _m: None)
    if expected is HardwayError:
        assert str(err.value) == f"lab {name}: Input/output error: /sys/class/net/x; nothing was left behind"
    assert leftovers(name, subnet) == []
