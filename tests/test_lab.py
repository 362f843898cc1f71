"""hardway.lab: pure parts (names, address plan, inventory, node image) without root, and the real
lab (marker ``lab``): strict SSH to every node, idempotent up, status, stop/start, down, crash
cleanup and two labs side by side."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from hardway import deploy, inventory, remote
from hardway import lab as lab_lib
from hardway.errors import HardwayError
from hardway.files import File
from hardway.lab import image as lab_image
from hardway.lab import probes as lab_probes
from tests.labtools import connect, invoke, run

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize("name", ["lab", "a", "abcdef", "abcdefg", "lab-2", "x" * 40, "t0z9k", "my-big-lab-1"])
def test_interface_names_fit_the_kernel_limit(name: str) -> None:
    assert len(lab_lib.bridge_name(name)) <= 15
    assert len(lab_lib.veth_name(name, 999) + "p") <= 15
    tag = lab_lib.iface_tag(name)
    assert "-" not in tag
    if name.isalnum() and len(name) <= 6:
        assert tag == name
    else:
        assert tag.startswith("x") and len(tag) == 6


def test_interface_names_differ_between_labs() -> None:
    names = ["lab", "lab2", "lab-2", "my-lab-a", "my-lab-b", "t12345", "u12345"]
    bridges = {lab_lib.bridge_name(n) for n in names}
    assert len(bridges) == len(names)


def test_link_pattern_matches_only_its_own_lab() -> None:
    pattern = lab_lib.link_pattern("lab")
    for mine in ("hw-lab", "hw-lab-0", "hw-lab-12", "hw-lab-3p"):
        assert pattern.match(mine), mine
    for other in ("hw-lab2", "hw-lab2-0", "hw-labx-1", "hw-lab-", "hw-lab-a", "eth0", "hw-xab12c"):
        assert not pattern.match(other), other


def test_netns_and_machine_names_are_unambiguous() -> None:
    # lab "a" node "b-c" and lab "a-b" node "c" must not share a netns
    assert lab_lib.netns_name("a", "b-c") != lab_lib.netns_name("a-b", "c")
    assert lab_lib.netns_name("lab", "controller-0") == "hw.lab.controller-0"


@pytest.mark.parametrize("bad", ["", "Lab", "-x", "x-", "a_b", "a.b", "x" * 41])
def test_bad_lab_names_are_one_line_errors(bad: str) -> None:
    with pytest.raises(HardwayError) as err:
        lab_lib.check_name(bad)
    assert "\n" not in str(err.value)


def test_default_layout() -> None:
    p = lab_lib.layout()
    assert p.name == "lab" and p.subnet == ipaddress.ip_network("10.77.0.0/24")
    assert [(n.name, str(n.address), n.roles) for n in p.nodes] == [
        ("controller-0", "10.77.0.10", ("controller",)),
        ("controller-1", "10.77.0.11", ("controller",)),
        ("controller-2", "10.77.0.12", ("controller",)),
        ("worker-0", "10.77.0.20", ("worker",)),
        ("worker-1", "10.77.0.21", ("worker",)),
        ("lb-0", "10.77.0.5", ("loadbalancer",)),  # last: the others keep their interface names
    ]
    assert [str(n.pod_cidr) for n in p.nodes if n.pod_cidr] == ["10.200.0.0/24", "10.200.1.0/24"]
    assert str(p.gateway) == "10.77.0.1"
    assert p.state_dir == Path("/var/lib/hardway/labs/lab")
    assert p.ssh_key == Path("/var/lib/hardway/labs/lab/ssh/id_ed25519")
    assert p.upper("worker-1") == Path("/var/lib/hardway/labs/lab/nodes/worker-1/upper")
    assert p.netns(p.nodes[0]) == "hw.lab.controller-0" and p.veth(p.nodes[4]) == "hw-lab-4"


@pytest.mark.parametrize(("subnet", "controllers", "workers", "says"), [
    ("10.32.0.0/24", 3, 2, "service_cidr"),
    ("10.200.7.0/24", 3, 2, "cluster_cidr"),
    ("10.0.0.0/8", 3, 2, "overlaps"),
    ("fd00::/64", 3, 2, "IPv6"),
    ("8.8.8.0/24", 3, 2, "private"),
    ("10.77.0.1/24", 3, 2, "not a network"),
    ("10.77.0.0/24", 11, 0, "controllers"),
    ("10.77.0.0/24", 0, 2, "controllers"),
    ("10.77.0.0/27", 3, 12, "do not fit"),
])
def test_layout_rejects(subnet: str, controllers: int, workers: int, says: str) -> None:
    with pytest.raises(HardwayError, match=says):
        lab_lib.layout("lab", controllers, workers, subnet)


def test_twelve_nodes_fit_a_24() -> None:
    p = lab_lib.layout("b12", 3, 9, "10.78.5.0/24", loadbalancers=0)
    assert len(p.nodes) == 12 and str(p.nodes[-1].address) == "10.78.5.28"
    assert str(p.nodes[-1].pod_cidr) == "10.200.8.0/24"


def test_the_load_balancer_node_is_the_api_endpoint() -> None:
    p = lab_lib.layout("t5", 3, 1, "10.78.13.0/24")
    assert p.loadbalancers == 1 and p.record()["loadbalancers"] == 1
    inv = inventory.parse(lab_lib.render_inventory(p), "lab.yaml")
    assert [n.name for n in inv.loadbalancers] == ["lb-0"]
    assert str(inv.api_endpoint.address) == "10.78.13.5" and inv.api_endpoint.port == 6443
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert component not in inv.binaries  # the stand-ins run
    assert "lb-0" not in [n.name for n in lab_lib.layout("t5", 3, 1, "10.78.13.0/24", loadbalancers=0).nodes]
    with pytest.raises(HardwayError, match="0 or 1"):
        lab_lib.layout("t5", 3, 1, "10.78.13.0/24", loadbalancers=2)


def test_a_lab_recorded_before_the_load_balancer_has_none(tmp_path: Path) -> None:
    import json

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "lab.json").write_text(json.dumps(
        {"name": "old", "subnet": "10.78.14.0/24", "controllers": 1, "workers": 0}))
    assert lab_lib.load_layout("old", tmp_path).loadbalancers == 0


def test_inventory_round_trips_through_the_loader(tmp_path: Path) -> None:
    p = lab_lib.layout("t1", 3, 1, "10.78.9.0/24", state_root=tmp_path / "labs")
    inv = inventory.parse(lab_lib.render_inventory(p), "lab.yaml", base=Path("/nonexistent"))
    assert inv.cluster_name == "t1"
    assert str(inv.service_cidr) == "10.32.0.0/24" and str(inv.cluster_cidr) == "10.200.0.0/16"
    assert [(n.name, str(n.address), sorted(n.roles)) for n in inv.nodes] == [
        (n.name, str(n.address), list(n.roles)) for n in p.nodes
    ]
    assert str(inv.node("worker-0").pod_cidr) == "10.200.0.0/24"
    assert inv.ssh.user == "root" and inv.ssh.become == "root"
    assert inv.ssh.key == tmp_path / "labs/t1/ssh/id_ed25519"
    assert inv.ssh.known_hosts == tmp_path / "labs/t1/ssh/known_hosts"
    assert inv.ssh.key.is_absolute() and inv.ssh.known_hosts.is_absolute()
    assert inv.binaries["etcd"].path == Path("/usr/bin/etcd")
    assert inv.binaries["etcdctl"].path == Path("/usr/bin/etcdctl")
    assert inv.warnings == ()


def test_shipped_inventory_is_what_lab_up_writes_by_default() -> None:
    shipped = (ROOT / "inventory" / "lab.yaml").read_text()
    assert shipped == lab_lib.render_inventory(lab_lib.layout())
    inv = inventory.load(ROOT / "inventory" / "lab.yaml")
    assert inv.cluster_name == "lab" and len(inv.controllers) == 3 and len(inv.workers) == 2


def test_write_inventory_only_when_changed(tmp_path: Path) -> None:
    p = lab_lib.layout("t2", 1, 0, "10.78.10.0/24", state_root=tmp_path)
    target = tmp_path / "inv.yaml"
    assert lab_lib.write_inventory(p, target) is True
    mtime = target.stat().st_mtime_ns
    assert lab_lib.write_inventory(p, target) is False
    assert target.stat().st_mtime_ns == mtime


def test_hosts_sshd_and_known_hosts_rendering(tmp_path: Path) -> None:
    p = lab_lib.layout("t3", 3, 1, "10.78.11.0/24")
    hosts = lab_lib.render_hosts(p)
    for n in p.nodes:
        assert f"{n.address}\t{n.name}\n" in hosts
    assert "ListenAddress 10.78.11.20\n" in lab_lib.render_sshd_config(p.node("worker-0"))
    _, public = lab_image.new_ssh_key()
    line = lab_lib.known_hosts_line(p.node("controller-1"), f"{public} root@controller-1")
    assert line.startswith("controller-1,10.78.11.11 ssh-ed25519 ")
    path = tmp_path / "known_hosts"
    path.write_text(line)
    keys = paramiko.HostKeys(str(path))
    assert keys.lookup("10.78.11.11") is not None and keys.lookup("controller-1") is not None
    assert keys.lookup("10.78.11.12") is None


def test_nspawn_command_line_is_recognised_per_lab() -> None:
    p = lab_lib.layout("lab", 1, 0)
    argv = lab_lib.nspawn_command(p, p.nodes[0])
    assert lab_lib.nspawn_node(["/usr/bin/" + argv[0], *argv[1:]], p.state_dir) == "controller-0"
    assert lab_lib.nspawn_node(argv, Path("/var/lib/hardway/labs/la")) is None
    assert lab_lib.nspawn_node(argv, Path("/var/lib/hardway/labs/lab2")) is None
    assert lab_lib.nspawn_node(["vim", *argv[1:]], p.state_dir) is None
    for flag in ("--register=no", "--keep-unit", "--network-namespace-path=/run/netns/hw.lab.controller-0",
                 "--boot"):
        assert flag in argv


def test_parse_mountinfo_decodes_escapes() -> None:
    text = (
        "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
        "40 1 0:70 / /var/lib/hardway/labs/lab/nodes/c-0/merged rw - overlay hw-lab rw,lowerdir=/\n"
    )
    assert lab_lib.parse_mountinfo(text) == [
        ("/mnt/with space", "ext3"), ("/var/lib/hardway/labs/lab/nodes/c-0/merged", "overlay"),
    ]


def test_free_subnet_skips_taken_ones() -> None:
    taken = [ipaddress.IPv4Network("10.78.0.0/24"), ipaddress.IPv4Network("10.78.2.0/23")]
    assert str(lab_lib.free_subnet(0, taken=taken)) == "10.78.1.0/24"
    assert str(lab_lib.free_subnet(255, taken=[ipaddress.IPv4Network("10.78.255.0/24")])) == "10.78.0.0/24"
    with pytest.raises(HardwayError, match="no free"):
        lab_lib.free_subnet(0, taken=[lab_lib.SCRATCH_POOL])


def _fake_host(root: Path) -> None:
    units = root / "etc/systemd/system"
    for rel in ("multi-user.target.wants/etcd.service", "multi-user.target.wants/postgresql.service",
                "multi-user.target.wants/ssh.service", "timers.target.wants/apt-daily.timer",
                "getty.target.wants/getty@tty1.service"):
        (units / rel).parent.mkdir(parents=True, exist_ok=True)
        (units / rel).symlink_to(f"/lib/systemd/system/{os.path.basename(rel)}")
    (units / "etcd2.service").symlink_to("/lib/systemd/system/etcd.service")
    (units / "sshd.service").symlink_to("/lib/systemd/system/ssh.service")
    for rel in ("usr/bin/etcd", "usr/bin/etcdctl", "usr/local/bin/etcd-old", "etc/ssh/ssh_host_rsa_key",
                "etc/ssh/ssh_host_ed25519_key"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "var/lib/etcd").mkdir(parents=True)
    (root / "var/lib/hardway/labs").mkdir(parents=True)


def test_node_image_masks_services_and_hides_distributed_binaries(tmp_path: Path) -> None:
    _fake_host(tmp_path)
    image = lab_lib.node_image(state_root=tmp_path / "var/lib/hardway/labs", host_root=tmp_path)
    assert {"postgresql.service", "postgresql@.service", "apt-daily.timer", "getty@tty1.service"} <= set(image.masks)
    assert "ssh.service" not in image.masks
    assert "etcd.service" not in image.masks  # a mask would sit exactly where our unit goes
    assert set(image.hidden) == {
        "etc/systemd/system/multi-user.target.wants/etcd.service", "etc/systemd/system/etcd2.service",
        "usr/bin/etcd", "usr/bin/etcdctl", "usr/local/bin/etcd-old", "var/lib/etcd",
        "etc/ssh/ssh_host_rsa_key", "var/lib/hardway/labs",
    }


def test_preflight_refuses_non_root_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for call in (lambda: lab_lib.up("tx"), lambda: lab_lib.down("tx"), lambda: lab_lib.status("tx")):
        with pytest.raises(HardwayError, match="needs root") as err:
            call()
        assert "\n" not in str(err.value)


def test_preflight_installs_missing_packages_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(lab_probes, "missing_packages", lambda: ["etcd-server", "etcd-client"])
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        failing = cmd[:2] == ["apt-get", "install"]
        return subprocess.CompletedProcess(cmd, 100 if failing else 0, "", "E: Unable to locate package")

    monkeypatch.setattr(subprocess, "run", fake_run)
    said: list[str] = []
    with pytest.raises(HardwayError, match="could not install etcd-server etcd-client") as err:
        lab_lib.preflight(report=said.append)
    assert said == ["lab: installing missing Debian packages: etcd-server etcd-client (apt-get)"]
    assert calls[0][:2] == ["apt-get", "update"] and calls[1][-2:] == ["etcd-server", "etcd-client"]
    assert "Unable to locate package" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod) and chown need root")
def test_prepare_node_writes_identity_masks_and_whiteouts(tmp_path: Path) -> None:
    p = lab_lib.layout("t4", 1, 1, "10.78.12.0/24", state_root=tmp_path / "labs")
    image = lab_lib.NodeImage(masks=("postgresql.service",), hidden=("usr/bin/etcd", "var/lib/etcd"),
                              emptied=("root", "tmp"))
    node = p.node("worker-0")
    lab_lib.prepare_node(p, node, image, "ssh-ed25519 AAAA test\n")
    upper = p.upper(node)
    assert (upper / "etc/hostname").read_text() == "worker-0\n"
    machine_id = (upper / "etc/machine-id").read_text().strip()
    assert len(machine_id) == 32 and int(machine_id, 16)
    assert (upper / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA test\n"
    assert stat.S_IMODE((upper / "root/.ssh/authorized_keys").stat().st_mode) == 0o600
    assert os.getxattr(upper / "root", "trusted.overlay.opaque") == b"y"  # the host's home stays hidden
    assert os.getxattr(upper / "tmp", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE((upper / "tmp").stat().st_mode) == 0o1777
    assert sorted(os.listdir(upper / "root")) == [".bashrc", ".profile", ".ssh"]
    assert stat.S_IMODE((upper / "etc/ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert lab_lib.read_host_key(p, node).startswith("ssh-ed25519 ")
    for rel in ("usr/bin/etcd", "var/lib/etcd"):
        st = os.lstat(upper / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), rel
    assert os.readlink(upper / "etc/systemd/system/postgresql.service") == "/dev/null"
    assert not os.path.lexists(upper / "etc/systemd/system/etcd.service")
    assert os.readlink(upper / "etc/systemd/system/multi-user.target.wants/ssh.service").endswith("ssh.service")
    # parent dirs copy the host's mode (a 0700 upper /root must not open the host's 0700 /root)
    assert stat.S_IMODE((upper / "root").stat().st_mode) == stat.S_IMODE(os.stat("/root").st_mode)
    before = (upper / "etc/machine-id").read_text()
    lab_lib.prepare_node(p, node, image, "other\n")  # prepared once: a restart keeps the disk
    assert (upper / "etc/machine-id").read_text() == before


def test_lab_tests_fail_in_ci_and_skip_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import lab_unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"not root .*CI=true"):
        lab_unavailable("not root")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not root"):
        lab_unavailable("not root")


def test_format_status_table() -> None:
    rows = [lab_lib.NodeStatus("controller-0", "10.77.0.10", "controller", "running (pid 7)", "running", "ok"),
            lab_lib.NodeStatus("worker-0", "10.77.0.20", "worker", "stopped", "-", "-")]
    lines = lab_lib.format_status(rows).splitlines()
    assert lines[0].split() == ["NODE", "ADDRESS", "ROLES", "MACHINE", "SYSTEMD", "SSH"]
    assert lines[1].split() == ["controller-0", "10.77.0.10", "controller", "running", "(pid", "7)", "running",
                                "ok"]
    assert lines[2].split() == ["worker-0", "10.77.0.20", "worker", "stopped", "-", "-"]


# --------------------------------------------------------------------------------------------
# The real lab


@pytest.mark.lab
def test_every_node_answers_strict_ssh_as_the_inventory_says(lab: lab_lib.Lab) -> None:
    inv = lab.inventory
    assert inv.cluster_name == lab.name and inv.path == lab.inventory_path
    machine_ids = set()
    for node in inv.nodes:
        with connect(lab, node.name) as c:
            assert run(c, "hostname") == node.name
            state = run(c, "systemctl is-system-running")
            failed = run(c, "systemctl --failed --no-legend --plain") if state != "running" else ""
            journal = run(c, "for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do "
                             "journalctl -b -u $u --no-pager -o short-monotonic | tail -n 6; done") if failed else ""
            assert state == "running", f"{node.name}: {state}; failed units: {failed}\n{journal}"
            addr = run(c, "ip -o -4 addr show dev eth0")
            assert f"inet {node.address}/{lab.layout.subnet.prefixlen} " in addr
            machine_ids.add(run(c, "cat /etc/machine-id"))
            assert run(c, "getent hosts controller-0").split()[0] == str(inv.node("controller-0").address)
    assert len(machine_ids) == len(inv.nodes)


@pytest.mark.lab
def test_an_unknown_host_key_is_rejected(lab: lab_lib.Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(remote.RemoteError, match=r"controller-0 \(.*\): host key not in .*known_hosts; record it "
                                                 "deliberately"), connect(lab, "controller-0", known_hosts=empty):
        pass


@pytest.mark.lab
def test_nodes_start_bare_of_what_hardway_distributes(lab_factory) -> None:
    fresh = lab_factory(1, 0)  # not the session lab: other tests install etcd there
    try:
        check_bare(fresh)
    finally:
        lab_factory.down(fresh.name)


def check_bare(lab: lab_lib.Lab) -> None:
    with connect(lab, "controller-0") as c:
        assert run(c, "ls /usr/bin/etcd /usr/bin/etcdctl /var/lib/etcd /var/lib/hardway/labs 2>/dev/null; "
                      "command -v etcd etcdctl; true") == ""
        assert run(c, "systemctl is-enabled etcd.service") == "disabled"
        assert run(c, "systemctl is-active etcd.service postgresql.service") == "inactive\ninactive"
        assert run(c, "systemctl is-enabled postgresql.service apt-daily.timer") == "masked\nmasked"
        assert run(c, "ls -A /root/.ssh") == "authorized_keys"
        assert run(c, "ls -A /root") == ".bashrc\n.profile\n.ssh"  # not the jumpbox's home
        assert run(c, "ls /etc/ssh | grep host_") == "ssh_host_ed25519_key\nssh_host_ed25519_key.pub"
        # /etc/systemd/system/etcd.service is free for our unit (a /dev/null mask would swallow it)
        assert run(c, "test -e /etc/systemd/system/etcd.service || echo free") == "free"
        # the framework's way: the inventory's binary installed into /usr/local/bin on the node
        binary = lab.inventory.binaries["etcd"].path
        assert binary is not None
        deploy.install(c, [File("/usr/local/bin/etcd", 0o755, source=binary)])
        try:
            assert "etcd Version:" in run(c, "etcd --version")
        finally:
            run(c, "rm -f /usr/local/bin/etcd")


@pytest.mark.lab
def test_up_on_a_running_lab_changes_nothing(lab: lab_lib.Lab) -> None:
    pids = lab.pids()
    inventory_mtime = lab.inventory_path.stat().st_mtime_ns
    said: list[str] = []
    lab_lib.up(lab.name, lab.layout.controllers, lab.layout.workers, report=said.append)
    assert any("already running" in s and "nothing changed" in s for s in said), said
    res = invoke("lab.up", "--name", lab.name, "--nodes", str(lab.layout.controllers),
                 "--workers", str(lab.layout.workers))
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stdout
    assert lab.pids() == pids
    assert lab.inventory_path.stat().st_mtime_ns == inventory_mtime
    res = invoke("lab.up", "--name", lab.name, "--nodes", "1", "--workers", "0")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "lab.down" in res.stderr
    assert lab.pids() == pids


@pytest.mark.lab
def test_status_prints_a_table(lab: lab_lib.Lab) -> None:
    res = invoke("lab.status", "--name", lab.name)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NODE", "ADDRESS", "ROLES", "MACHINE", "SYSTEMD", "SSH"]
    for node, line in zip(lab.layout.nodes, lines[1:], strict=True):
        cells = line.split()
        assert cells[:3] == [node.name, str(node.address), ",".join(node.roles)]
        assert cells[3] == "running" and cells[-2:] == ["running", "ok"]


@pytest.mark.lab
def test_stop_node_makes_it_unreachable_and_start_node_brings_it_back(lab: lab_lib.Lab) -> None:
    node = lab.layout.nodes[-1]
    with connect(lab, node.name) as c:
        machine_id = run(c, "cat /etc/machine-id")
    others = {n: pid for n, pid in lab.pids().items() if n != node.name}
    lab.stop_node(node.name)
    try:
        assert node.name not in lab.pids()
        row = next(r for r in lab.status() if r.node == node.name)
        assert row.machine == "stopped"
        started = time.monotonic()
        with pytest.raises(OSError):  # timeout or no route to host: like a machine switched off
            socket.create_connection((str(node.address), 22), timeout=2).close()
        assert time.monotonic() - started > 0.5, "refused at once: the node answers like a live host"
        with connect(lab, lab.layout.nodes[0].name) as c:
            assert run(c, "hostname") == lab.layout.nodes[0].name
    finally:
        lab.start_node(node.name)
    with connect(lab, node.name) as c:
        assert run(c, "hostname") == node.name
        assert run(c, "cat /etc/machine-id") == machine_id  # same disk
        assert run(c, "systemctl is-system-running --wait") == "running"
    assert {n: pid for n, pid in lab.pids().items() if n != node.name} == others


@pytest.mark.lab
def test_a_second_lab_runs_beside_the_first(lab: lab_lib.Lab, lab_factory) -> None:
    pids = lab.pids()
    second = lab_factory(1, 0)
    try:
        assert second.layout.subnet != lab.layout.subnet and second.layout.bridge != lab.layout.bridge
        for the_lab in (lab, second):
            with connect(the_lab, "controller-0") as c:
                assert run(c, "hostname") == "controller-0"
                assert f"inet {the_lab.inventory.node('controller-0').address}/" in run(c, "ip -o -4 addr")
        with connect(second, "controller-0") as c:  # the labs do not see each other
            assert run(c, f"timeout 3 bash -c '</dev/tcp/{lab.layout.nodes[0].address}/22' || echo unreachable") \
                == "unreachable"
    finally:
        lab_factory.down(second.name)
    assert lab.pids() == pids
    with connect(lab, "controller-0") as c:
        assert run(c, "hostname") == "controller-0"


@pytest.mark.lab
def test_jumpbox_secrets_never_show_on_nodes(lab: lab_lib.Lab, tmp_path: Path) -> None:
    """Nodes boot from the host's /, but the checkout (pki/, build/), /tmp and homes start empty there."""
    planted = [lab_lib.PROJECT_ROOT / "pki" / "planted-ca.key", tmp_path / "planted.key"]
    for path in planted:
        path.write_text("not for nodes\n")
    try:
        for node in lab.inventory.nodes:
            r = remote.connect(lab.inventory, node)
            try:
                for path in planted:
                    assert not r.run(f"test -e {path}", check=False).ok, f"{node.name} sees {path}"
                # absent (a checkout under /tmp: nspawn gives nodes their own /tmp) or empty
                assert r.run(f"ls -A {lab_lib.PROJECT_ROOT} 2>/dev/null; true").stdout == ""
                assert r.run("test -d /tmp && test -w /tmp", check=False).ok, "nodes keep a usable /tmp"
            finally:
                r.close()
    finally:
        for path in planted:
            path.unlink()


def test_node_image_empties_the_checkout_and_tmp() -> None:
    emptied = lab_lib.node_image().emptied
    assert {"tmp", "var/tmp", "root"} <= set(emptied)
    assert str(lab_lib.PROJECT_ROOT.relative_to("/")) in emptied
