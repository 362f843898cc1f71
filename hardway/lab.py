"""The local lab: real systemd machines on one host, one network namespace each.

Each node is ``systemd-nspawn --boot`` over an overlayfs whose lower dir is the host's ``/``.
Before the first boot its upper dir gets what makes it a machine of its own: hostname, a fresh
machine-id, /etc/hosts naming every lab node, the lab's SSH key in root's authorized_keys, SSH
host keys generated here (so the lab's known_hosts is written from the node's disk: no trust on
first use), masks for the services the host image would start, and whiteouts hiding what hardway
itself distributes (etcd and friends), so a node starts as bare as hardware would.

Networking: a bridge ``hw-<tag>`` holding the subnet's .1 (the host is the jumpbox) and, per
node, a netns ``hw.<lab>.<node>`` with a veth (``hw-<tag>-<i>`` on the bridge, ``eth0`` inside)
carrying the node's address. Nothing is routed or NATed beyond the bridge.

State (root only)::

    /var/lib/hardway/labs/<lab>/
        lab.json                 what was asked: name, subnet, controllers, workers
        inventory.yaml           the lab's inventory (paths absolute)
        ssh/id_ed25519{,.pub}    the key every node accepts for root
        ssh/known_hosts          every node's host key, read from its disk
        nodes/<node>/upper/      the node's disk: everything it changed relative to the host's /
        nodes/<node>/work/       overlayfs work dir
        nodes/<node>/merged/     the node's root while it runs (an overlay mount)
        nodes/<node>/nspawn.log  the machine's console
        nodes/<node>/nspawn.pid  the systemd-nspawn process
        nodes/<node>/prepared    marker: the upper dir is complete

Everything is named by lab, so labs with other names and subnets run side by side, and
``down`` finds what a crashed run left by name (netns, links), by command line (nspawn
processes) and by the mount table (overlays), never by assuming.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hardway.errors import HardwayError

if TYPE_CHECKING:
    from hardway.inventory import Inventory

STATE_ROOT = Path("/var/lib/hardway/labs")
DEFAULT_NAME = "lab"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
DEFAULT_CONTROLLERS = 3
DEFAULT_WORKERS = 2
SERVICE_CIDR = ipaddress.IPv4Network("10.32.0.0/24")
CLUSTER_CIDR = ipaddress.IPv4Network("10.200.0.0/16")
# Subnets handed out by free_subnet() (tests, benchmarks): away from the default lab's.
SCRATCH_POOL = ipaddress.IPv4Network("10.78.0.0/16")
CONTROLLER_OFFSET = 10  # controller-i at .10+i
WORKER_OFFSET = 20  # worker-i at .20+i
MAX_CONTROLLERS = WORKER_OFFSET - CONTROLLER_OFFSET
PACKAGES = ("systemd-container", "openssh-server", "etcd-server", "etcd-client", "iproute2")
NODE_IFACE = "eth0"

# Units the host enables that nodes keep; every other unit enabled under
# /etc/systemd/system/*.wants on the host is masked in the nodes (postgresql, timers, ...).
KEEP_UNITS = frozenset({"ssh.service", "sshd.service", "remote-fs.target", "machines.target"})
# Templates of masked units whose instances a generator would start anyway.
EXTRA_MASKS = ("postgresql@.service",)
# Units hardway installs itself at /etc/systemd/system/<unit>: never a /dev/null mask there
# (an upload would write into /dev/null); the packaged unit is disabled by hiding its wants link.
DISTRIBUTED_UNITS = (
    "etcd.service", "kube-apiserver.service", "kube-controller-manager.service",
    "kube-scheduler.service", "kubelet.service", "kube-proxy.service", "containerd.service",
)
# Binaries hardway distributes into /usr/local/bin: the host's copies are hidden from nodes.
DISTRIBUTED_BINARIES = (
    "etcd", "etcdctl", "etcdutl", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
    "kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "runc", "crictl",
)
# Host state that must not show through: the packaged etcd's data dir (a node starts without one).
HIDDEN_DIRS = ("var/lib/etcd",)
# Where a jumpbox keeps secrets: nodes get these as empty directories of their own (opaque in the
# overlay), so a CA key in the checkout's pki/ or a test's PKI under /tmp never reaches a node.
EMPTIED_DIRS = ("tmp", "var/tmp", "home", "root")
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the hardway checkout: pki/, build/

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
_SHORT_TAG = re.compile(r"^[a-z0-9]{1,6}$")
_MAX_NODES = 999  # veth names carry the index: hw-<6>-<3>p is 14 characters

logging.getLogger("paramiko").addHandler(logging.NullHandler())

Report = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Names and the address plan (pure)


def check_name(name: str) -> str:
    """A lab name: an RFC 1123 label of at most 40 characters (it is also the cluster name)."""
    if not _NAME.match(name or ""):
        raise HardwayError(
            f"lab name {name!r} is not valid: use 1-40 lower-case letters, digits and '-', starting "
            "and ending with a letter or digit"
        )
    return name


def iface_tag(name: str) -> str:
    """The lab's part of interface names (15-character limit): the name if it is at most six
    letters/digits, else 'x' and five hex digits of its sha256."""
    check_name(name)
    if _SHORT_TAG.match(name):
        return name
    return "x" + hashlib.sha256(name.encode()).hexdigest()[:5]


def bridge_name(name: str) -> str:
    return f"hw-{iface_tag(name)}"


def veth_name(name: str, index: int) -> str:
    """Host side of node ``index``'s veth; its peer is created as this name + 'p', then moved into
    the node's netns and renamed eth0."""
    return f"hw-{iface_tag(name)}-{index}"


def netns_name(name: str, node: str) -> str:
    return f"hw.{name}.{node}"


def machine_name(name: str, node: str) -> str:
    return f"hw.{name}.{node}"


def link_pattern(name: str) -> re.Pattern[str]:
    """Every host-side interface name of lab ``name``: its bridge, veths and unmoved veth peers."""
    return re.compile(rf"^hw-{re.escape(iface_tag(name))}(-\d+p?)?$")


@dataclass(frozen=True)
class LabNode:
    name: str
    index: int  # position in the lab; names its veth
    address: ipaddress.IPv4Address
    roles: tuple[str, ...]
    pod_cidr: ipaddress.IPv4Network | None = None


@dataclass(frozen=True)
class LabPlan:
    """Everything about a lab that follows from its name, size and subnet."""

    name: str
    subnet: ipaddress.IPv4Network
    controllers: int
    workers: int
    nodes: tuple[LabNode, ...]
    state_root: Path = STATE_ROOT

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's (jumpbox's) address on the lab bridge."""
        return self.subnet[1]

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "ssh" / "known_hosts"

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / "inventory.yaml"

    @property
    def record_path(self) -> Path:
        return self.state_dir / "lab.json"

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise HardwayError(
            f"lab {self.name!r} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})"
        )

    def node_dir(self, node: LabNode | str) -> Path:
        return self.state_dir / "nodes" / _node_name(node)

    def upper(self, node: LabNode | str) -> Path:
        return self.node_dir(node) / "upper"

    def merged(self, node: LabNode | str) -> Path:
        return self.node_dir(node) / "merged"

    def console_log(self, node: LabNode | str) -> Path:
        return self.node_dir(node) / "nspawn.log"

    def netns(self, node: LabNode | str) -> str:
        return netns_name(self.name, _node_name(node))

    def veth(self, node: LabNode) -> str:
        return veth_name(self.name, node.index)

    def machine(self, node: LabNode | str) -> str:
        return machine_name(self.name, _node_name(node))

    def record(self) -> dict[str, object]:
        return {"name": self.name, "subnet": str(self.subnet), "controllers": self.controllers,
                "workers": self.workers}


def _node_name(node: LabNode | str) -> str:
    return node if isinstance(node, str) else node.name


def plan(
    name: str = DEFAULT_NAME,
    controllers: int = DEFAULT_CONTROLLERS,
    workers: int = DEFAULT_WORKERS,
    subnet: str | ipaddress.IPv4Network = DEFAULT_SUBNET,
    state_root: Path = STATE_ROOT,
) -> LabPlan:
    """The address plan: controller-i at .10+i, worker-i at .20+i with pod_cidr 10.200.i.0/24."""
    check_name(name)
    try:
        net = ipaddress.ip_network(str(subnet), strict=True)
    except ValueError as exc:
        raise HardwayError(f"lab subnet {subnet!r} is not a network such as 10.77.0.0/24: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise HardwayError(f"lab subnet {net} is IPv6; the lab uses an IPv4 subnet such as 10.77.0.0/24")
    if not net.is_private:
        raise HardwayError(f"lab subnet {net} is not a private range; use one such as 10.77.0.0/24")
    for other, label in ((SERVICE_CIDR, "service_cidr"), (CLUSTER_CIDR, "cluster_cidr")):
        if net.overlaps(other):
            raise HardwayError(f"lab subnet {net} overlaps the cluster's {label} {other}; pick another")
    if not 1 <= controllers <= MAX_CONTROLLERS:
        raise HardwayError(f"{controllers} controllers: the lab takes 1 to {MAX_CONTROLLERS}")
    if workers < 0:
        raise HardwayError(f"{workers} workers: give 0 or more")
    max_workers = min(net.num_addresses - 1 - WORKER_OFFSET, 256, _MAX_NODES + 1 - MAX_CONTROLLERS)
    if workers > max_workers:
        raise HardwayError(
            f"{workers} workers do not fit subnet {net} (at most {max(max_workers, 0)}); use a larger subnet"
        )
    if controllers and net.num_addresses - 1 <= CONTROLLER_OFFSET + controllers - 1:
        raise HardwayError(f"subnet {net} is too small for {controllers} controllers; use a /24")
    nodes: list[LabNode] = []
    for i in range(controllers):
        nodes.append(LabNode(f"controller-{i}", len(nodes), net[CONTROLLER_OFFSET + i], ("controller",)))
    for i in range(workers):
        pod = ipaddress.IPv4Network(f"{CLUSTER_CIDR[0] + i * 256}/24")
        nodes.append(LabNode(f"worker-{i}", len(nodes), net[WORKER_OFFSET + i], ("worker",), pod))
    return LabPlan(name=name, subnet=net, controllers=controllers, workers=workers, nodes=tuple(nodes),
                   state_root=state_root)


def render_inventory(p: LabPlan) -> str:
    """The lab's inventory YAML (deterministic: the default lab's is shipped as inventory/lab.yaml)."""
    lines = [
        f"# The local lab {p.name!r}, as `invoke lab.up` writes it (it rewrites this file: edit the lab's",
        "# flags, not this). Tasks use inventory/lab.yaml unless given --inventory or HARDWAY_INVENTORY.",
        "cluster:",
        f"  name: {p.name}",
        "  domain: cluster.local",
        f"  service_cidr: {SERVICE_CIDR}",
        f"  cluster_cidr: {CLUSTER_CIDR}",
        "",
        "ssh:",
        "  user: root",
        "  port: 22",
        f"  key: {p.ssh_key}",
        f"  known_hosts: {p.known_hosts}",
        "",
        "# The nodes boot from the host's / with these hidden; hardway installs them into /usr/local/bin.",
        "binaries:",
        "  etcd: {path: /usr/bin/etcd}",
        "  etcdctl: {path: /usr/bin/etcdctl}",
        "",
        f"# Lab subnet {p.subnet} on bridge {p.bridge}; the jumpbox (this host) is {p.gateway}.",
        "nodes:",
    ]
    for n in p.nodes:
        roles = ", ".join(n.roles)
        extra = f", pod_cidr: {n.pod_cidr}" if n.pod_cidr else ""
        lines.append(f"  - {{name: {n.name}, address: {n.address}, roles: [{roles}]{extra}}}")
    return "\n".join(lines) + "\n"


def render_hosts(p: LabPlan) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters", "", f"# lab {p.name}"]
    lines += [f"{n.address}\t{n.name}" for n in p.nodes]
    return "\n".join(lines) + "\n"


def render_sshd_config(node: LabNode) -> str:
    return (
        "# hardway lab: sshd on the node's own address, with the host key generated for it\n"
        f"ListenAddress {node.address}\n"
        "ListenAddress 127.0.0.1\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
        # No PAM: every exec would open a logind session, start and stop user@0 and
        # user-runtime-dir@0, and under hardway's many short commands those race and leave the
        # node `degraded`. Key-only root login needs no PAM.
        "UsePAM no\n"
    )


def known_hosts_line(node: LabNode, public_key: str) -> str:
    """``name,address keytype base64`` (the key's comment dropped)."""
    keytype, blob = public_key.split()[:2]
    return f"{node.name},{node.address} {keytype} {blob}\n"


def free_subnet(
    seed: int,
    taken: list[ipaddress.IPv4Network] | None = None,
    avoid: tuple[ipaddress.IPv4Network, ...] = (),
) -> ipaddress.IPv4Network:
    """A /24 from SCRATCH_POOL that overlaps nothing in ``taken`` (default: the host's routes and
    addresses and every recorded lab) nor ``avoid``, starting from ``seed``: for tests and benchmarks."""
    if taken is None:
        taken = _host_networks(exclude_dev=None) + [lab.subnet for lab in recorded_labs()]
    taken = [*taken, *avoid]
    subnets = list(SCRATCH_POOL.subnets(new_prefix=24))
    for k in range(len(subnets)):
        candidate = subnets[(seed + k) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise HardwayError(f"no free /24 left in {SCRATCH_POOL}; remove some labs (invoke lab.down --name NAME)")


# --------------------------------------------------------------------------------------------
# Reading the host: processes, mounts, links (parsers are pure)


def nspawn_node(argv: list[str], state_dir: Path) -> str | None:
    """The node a systemd-nspawn command line boots, if it belongs to the lab at ``state_dir``."""
    if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
        return None
    prefix = f"--directory={state_dir}/nodes/"
    for arg in argv[1:]:
        if arg.startswith(prefix) and arg.endswith("/merged"):
            node = arg[len(prefix):-len("/merged")]
            if node and "/" not in node:
                return node
    return None


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, fs type) for each line of /proc/self/mountinfo, with octal escapes decoded."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or "-" not in parts:
            continue
        fstype = parts[parts.index("-") + 1]
        out.append((_unescape(parts[4]), fstype))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _proc_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return data.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def nspawn_processes(p: LabPlan) -> dict[str, int]:
    """node name -> pid of every live systemd-nspawn booting a node of this lab.

    While nspawn forks the machine's PID 1, the child still shows nspawn's command line until it
    execs systemd: a match whose parent also matches is such a child, not a machine."""
    found: dict[int, str] = {}
    for pid in _pids():
        node = nspawn_node(_proc_argv(pid), p.state_dir)
        if node is not None and _alive(pid):
            found[pid] = node
    return {node: pid for pid, node in sorted(found.items()) if _ppid(pid) not in found}


def _init_pid(nspawn_pid: int) -> int | None:
    """The node's PID 1 (as seen from the host): the child of its systemd-nspawn."""
    for pid in _pids():
        if _ppid(pid) == nspawn_pid and _alive(pid):
            return pid
    return None


def lab_mounts(p: LabPlan) -> list[str]:
    """Mount points under the lab's state dir, deepest first."""
    text = Path("/proc/self/mountinfo").read_text()
    root = str(p.state_dir)
    points = [m for m, _ in parse_mountinfo(text) if m == root or m.startswith(root + "/")]
    return sorted(set(points), key=lambda m: m.count("/"), reverse=True)


def lab_netns(p: LabPlan) -> list[str]:
    prefix = f"hw.{p.name}."
    return [ns for ns in _netns_list() if ns.startswith(prefix) and "." not in ns[len(prefix):]]


def _netns_list() -> list[str]:
    names = set()
    with contextlib.suppress(FileNotFoundError):
        names.update(os.listdir("/run/netns"))
    res = _run(["ip", "netns", "list"], check=False)
    names.update(line.split()[0] for line in res.stdout.splitlines() if line.strip())
    return sorted(names)


def _links() -> list[str]:
    res = _run(["ip", "-j", "link", "show"], check=False)
    try:
        return [entry["ifname"] for entry in json.loads(res.stdout or "[]")]
    except (ValueError, KeyError):
        return []


def lab_links(p: LabPlan) -> list[str]:
    pattern = link_pattern(p.name)
    return [name for name in _links() if pattern.match(name)]


def _host_networks(exclude_dev: str | None) -> list[ipaddress.IPv4Network]:
    """Networks of the host's IPv4 addresses and routes (not the default route)."""
    nets: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(ValueError, KeyError, HardwayError):
        for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
            if entry.get("ifname") == exclude_dev:
                continue
            for a in entry.get("addr_info", []):
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
        for route in json.loads(_run(["ip", "-j", "-4", "route", "show"]).stdout or "[]"):
            dst = route.get("dst")
            if dst and dst != "default" and route.get("dev") != exclude_dev:
                nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return [n for n in nets if not n.is_loopback]


# --------------------------------------------------------------------------------------------
# Running commands


def _run(cmd: list[str], check: bool = True, timeout: float = 60.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                             stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise HardwayError(f"{cmd[0]} not found; install it (lab.up installs {', '.join(PACKAGES)})") from None
    except subprocess.TimeoutExpired:
        raise HardwayError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from None
    if check and res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip() or f"exit code {res.returncode}").splitlines()[-1]
        raise HardwayError(f"`{' '.join(cmd)}` failed: {detail}")
    return res


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HardwayError(f"{what} needs root (it manages network namespaces, mounts and machines); "
                           "run it as root")


def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def preflight(report: Report = print) -> None:
    """Root, the Debian packages (installed if missing), overlayfs, nspawn and netns support."""
    require_root("the lab")
    if shutil.which("dpkg-query"):
        missing = missing_packages()
        if missing:
            report(f"lab: installing missing Debian packages: {' '.join(missing)} (apt-get)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    tail = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
                    raise HardwayError(f"could not install {' '.join(missing)}: `{' '.join(cmd)}`: {tail}")
    for tool in ("systemd-nspawn", "ip", "nsenter", "setsid", "mount", "umount"):
        if shutil.which(tool) is None:
            raise HardwayError(f"{tool} not found: the lab needs {', '.join(PACKAGES)} and util-linux")
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise HardwayError("this kernel has no overlayfs (not in /proc/filesystems, modprobe overlay "
                               "failed); the lab needs it")
    if not Path("/proc/self/ns/net").exists():
        raise HardwayError("this kernel has no network namespaces (/proc/self/ns/net missing)")
    res = _run(["ip", "netns", "list"], check=False)
    if res.returncode != 0:
        raise HardwayError(f"`ip netns` does not work here: {res.stderr.strip()}")
    raise_kernel_limits(report)


# Every node's systemd, journald, logind and dbus take ~10 inotify instances from root's
# host-wide budget (no user namespaces): Debian's default of 128 runs out at about a dozen
# nodes, and then services fail in odd ways (sshd never listening, stuck shutdowns).
KERNEL_LIMITS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 524288}


def raise_kernel_limits(report: Report = print) -> None:
    """Raise (never lower) the host limits the lab needs, saying so."""
    for key, wanted in KERNEL_LIMITS.items():
        path = Path("/proc/sys") / key
        try:
            current = int(path.read_text())
        except (OSError, ValueError):
            continue
        if current < wanted:
            try:
                path.write_text(f"{wanted}\n")
            except OSError as exc:
                raise HardwayError(f"cannot raise {key.replace('/', '.')} from {current} to {wanted} "
                                   f"(the lab's machines need it): {exc}") from None
            report(f"lab: raised {key.replace('/', '.')} from {current} to {wanted} for the lab's machines")


@contextlib.contextmanager
def _locked(p: LabPlan) -> Iterator[None]:
    p.state_root.mkdir(parents=True, exist_ok=True)
    lock = p.state_root / f".{p.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HardwayError(f"another lab command is working on lab {p.name!r} (lock {lock}); "
                               "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The recorded labs


def load_plan(name: str, state_root: Path = STATE_ROOT) -> LabPlan | None:
    """The plan recorded by ``up`` for lab ``name``, or None if there is none (or it is unreadable)."""
    path = state_root / check_name(name) / "lab.json"
    try:
        rec = json.loads(path.read_text())
        return plan(rec["name"], int(rec["controllers"]), int(rec["workers"]), rec["subnet"], state_root)
    except (OSError, ValueError, KeyError, TypeError, HardwayError):
        return None


def recorded_labs(state_root: Path = STATE_ROOT) -> list[LabPlan]:
    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(state_root)):
            if _NAME.match(entry):
                found = load_plan(entry, state_root)
                if found is not None:
                    out.append(found)
    return out


# --------------------------------------------------------------------------------------------
# A node's disk


def _mkdirs(upper: Path, rel: str) -> Path:
    """Create ``upper/rel`` and its parents, copying each directory's mode and owner from the
    host's, so a plain (non-opaque) upper directory merges with the lower one unchanged."""
    path = upper
    lower = Path("/")
    for part in Path(rel).parts:
        path, lower = path / part, lower / part
        if path.is_dir():
            continue
        st = os.lstat(lower) if os.path.lexists(lower) else None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise HardwayError(f"internal: {lower} is not a directory on the host; cannot shadow it")
        path.mkdir()
        if st is not None:
            os.chmod(path, stat.S_IMODE(st.st_mode))
            os.chown(path, st.st_uid, st.st_gid)
    return path


def _put(upper: Path, rel: str, data: str | bytes, mode: int = 0o644) -> None:
    parent = _mkdirs(upper, os.path.dirname(rel))
    target = parent / os.path.basename(rel)
    if target.is_symlink() or target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(target, mode)
    os.chown(target, 0, 0)


def _symlink(upper: Path, rel: str, to: str) -> None:
    parent = _mkdirs(upper, os.path.dirname(rel))
    target = parent / os.path.basename(rel)
    if os.path.lexists(target):
        target.unlink()
    os.symlink(to, target)


def _whiteout(upper: Path, rel: str) -> None:
    """Hide the host's ``/rel`` from the node: an overlayfs whiteout (char device 0:0)."""
    parent = _mkdirs(upper, os.path.dirname(rel))
    target = parent / os.path.basename(rel)
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@dataclass(frozen=True)
class NodeImage:
    """What a node's upper dir must hold, derived from the host: masks, hidden paths, files."""

    masks: tuple[str, ...]  # units masked in /etc/systemd/system
    hidden: tuple[str, ...]  # paths relative to / whited out
    emptied: tuple[str, ...] = ()  # directories relative to / that start empty on the node
    enable: tuple[str, ...] = ("multi-user.target.wants/ssh.service",)


def node_image(state_root: Path = STATE_ROOT, host_root: Path = Path("/")) -> NodeImage:
    """Decide, from the host at ``host_root``, which units to mask and which paths to hide."""
    etc_units = host_root / "etc/systemd/system"
    masks: set[str] = set(EXTRA_MASKS)
    hidden: set[str] = set()
    for link in sorted(glob.glob(str(etc_units / "*.wants" / "*")) + glob.glob(str(etc_units / "*.requires" / "*"))):
        unit = os.path.basename(link)
        rel = os.path.relpath(link, host_root)
        if unit in DISTRIBUTED_UNITS:
            hidden.add(rel)  # disabled, not masked: our own unit goes to /etc/systemd/system/<unit>
        elif unit not in KEEP_UNITS:
            masks.add(unit)
    for unit in DISTRIBUTED_UNITS:
        for rel in (f"etc/systemd/system/{unit}", f"etc/systemd/system/{unit}.d"):
            if os.path.lexists(host_root / rel):
                hidden.add(rel)
    for link in glob.glob(str(etc_units / "*")):  # aliases such as etcd2.service -> etcd.service
        if os.path.islink(link) and os.path.basename(os.readlink(link)) in DISTRIBUTED_UNITS:
            hidden.add(os.path.relpath(link, host_root))
    for name in DISTRIBUTED_BINARIES:
        for d in ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"):
            if os.path.lexists(host_root / d / name):
                hidden.add(f"{d}/{name}")
    for path in glob.glob(str(host_root / "usr/local/bin/etcd*")):
        hidden.add(os.path.relpath(path, host_root))
    for rel in HIDDEN_DIRS:
        if os.path.lexists(host_root / rel):
            hidden.add(rel)
    for path in glob.glob(str(host_root / "etc/ssh/ssh_host_*")):
        if not os.path.basename(path).startswith("ssh_host_ed25519_key"):
            hidden.add(os.path.relpath(path, host_root))  # the jumpbox's own host keys stay on it
    # The labs' state (every node's disk, the lab's private key) is not the nodes' business.
    with contextlib.suppress(ValueError):
        rel_state = state_root.resolve().relative_to(host_root.resolve())
        if str(rel_state) != ".":
            hidden.add(str(rel_state))
    emptied = {rel for rel in EMPTIED_DIRS if os.path.isdir(host_root / rel)}
    with contextlib.suppress(ValueError):
        emptied.add(str(PROJECT_ROOT.relative_to(host_root.resolve())))
    return NodeImage(masks=tuple(sorted(masks)), hidden=tuple(sorted(hidden)), emptied=tuple(sorted(emptied)))


def _host_key() -> tuple[bytes, str]:
    """A fresh Ed25519 key: (OpenSSH private key bytes, 'ssh-ed25519 AAAA...' public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def _ensure_client_key(p: LabPlan) -> str:
    ssh_dir = p.ssh_key.parent
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ssh_dir, 0o700)
    pub_path = p.ssh_key.with_suffix(".pub")
    if not (p.ssh_key.is_file() and pub_path.is_file()):
        private, public = _host_key()
        tmp = p.ssh_key.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        pub_path.write_text(f"{public} hardway-lab-{p.name}\n")
        os.replace(tmp, p.ssh_key)
    return pub_path.read_text()


def prepare_node(p: LabPlan, node: LabNode, image: NodeImage, authorized_key: str) -> None:
    """Write the node's upper dir (once): identity, SSH, masks and whiteouts."""
    d = p.node_dir(node)
    marker = d / "prepared"
    if marker.exists():
        return
    if d.exists():  # half-written by an interrupted run
        for sub in ("upper", "work"):
            shutil.rmtree(d / sub, ignore_errors=True)
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / sub, 0o755)
    upper = p.upper(node)
    _put(upper, "etc/hostname", f"{node.name}\n")
    _put(upper, "etc/machine-id", f"{uuid.uuid4().hex}\n", 0o444)
    _put(upper, "etc/hosts", render_hosts(p))
    for rel in image.emptied:  # root's home among them: Debian's dotfiles, not the jumpbox's
        os.setxattr(_mkdirs(upper, rel), "trusted.overlay.opaque", b"y")
    for dotfile in ("bashrc", "profile"):
        default = Path(f"/usr/share/base-files/dot.{dotfile}")
        _put(upper, f"root/.{dotfile}", default.read_bytes() if default.is_file() else b"")
    ssh_root = _mkdirs(upper, "root/.ssh")
    os.chmod(ssh_root, 0o700)
    _put(upper, "root/.ssh/authorized_keys", authorized_key, 0o600)
    private, public = _host_key()
    _put(upper, "etc/ssh/ssh_host_ed25519_key", private, 0o600)
    _put(upper, "etc/ssh/ssh_host_ed25519_key.pub", f"{public} root@{node.name}\n", 0o644)
    _put(upper, "etc/ssh/sshd_config.d/hardway-lab.conf", render_sshd_config(node))
    for rel in image.hidden:
        _whiteout(upper, rel)
    for unit in image.masks:
        _symlink(upper, f"etc/systemd/system/{unit}", "/dev/null")
    for rel in image.enable:
        _symlink(upper, f"etc/systemd/system/{rel}", f"/lib/systemd/system/{os.path.basename(rel)}")
    marker.write_text("")


def read_host_key(p: LabPlan, node: LabNode) -> str:
    """The node's SSH host public key, read from its disk (its upper dir)."""
    path = p.upper(node) / "etc/ssh/ssh_host_ed25519_key.pub"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise HardwayError(f"node {node.name}: cannot read its host key {path}: {exc}") from None


def _write_known_hosts(p: LabPlan) -> None:
    text = "".join(known_hosts_line(n, read_host_key(p, n)) for n in p.nodes)
    tmp = p.known_hosts.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p.known_hosts)


def write_inventory(p: LabPlan, path: Path) -> bool:
    """Write the lab's inventory to ``path`` if its content differs; True if it wrote."""
    text = render_inventory(p)
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


# --------------------------------------------------------------------------------------------
# Network, mount, machine: each step idempotent so a crashed run can be resumed or removed


def _ensure_bridge(p: LabPlan) -> None:
    if p.bridge not in _links():
        _run(["ip", "link", "add", p.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
    _run(["ip", "addr", "replace", f"{p.gateway}/{p.subnet.prefixlen}", "dev", p.bridge])
    _run(["ip", "link", "set", p.bridge, "up"])


def _ensure_node_network(p: LabPlan, node: LabNode) -> None:
    ns = p.netns(node)
    if ns not in _netns_list():
        _run(["ip", "netns", "add", ns])
    inside = _run(["ip", "-n", ns, "link", "show", NODE_IFACE], check=False).returncode == 0
    host_side = p.veth(node)
    links = _links()
    if not (inside and host_side in links):
        for stale in (host_side, host_side + "p"):
            if stale in links:
                _run(["ip", "link", "del", stale], check=False)
        if inside:
            _run(["ip", "-n", ns, "link", "del", NODE_IFACE], check=False)
        _run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", host_side + "p"])
        _run(["ip", "link", "set", host_side + "p", "netns", ns])
        _run(["ip", "-n", ns, "link", "set", host_side + "p", "name", NODE_IFACE])
    _run(["ip", "-n", ns, "addr", "replace", f"{node.address}/{p.subnet.prefixlen}", "dev", NODE_IFACE])
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _run(["ip", "-n", ns, "link", "set", NODE_IFACE, "up"])
    _run(["ip", "link", "set", host_side, "master", p.bridge, "up"])


def _ensure_mounted(p: LabPlan, node: LabNode) -> None:
    merged = str(p.merged(node))
    if merged in lab_mounts(p):
        return
    d = p.node_dir(node)
    opts = f"lowerdir=/,upperdir={d / 'upper'},workdir={d / 'work'}"
    _run(["mount", "-t", "overlay", f"hw-{p.name}-{node.name}", "-o", opts, merged])


def nspawn_command(p: LabPlan, node: LabNode) -> list[str]:
    return [
        "systemd-nspawn", "--quiet", "--boot", f"--directory={p.merged(node)}",
        f"--machine={p.machine(node)}", f"--hostname={node.name}",
        "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{p.netns(node)}",
        "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
    ]


def _launch(p: LabPlan, node: LabNode) -> int:
    """Start the node's machine in the background (its own session, reparented to init so it
    outlives this process) and return the systemd-nspawn pid."""
    running = nspawn_processes(p).get(node.name)
    if running:
        return running
    log_path = p.console_log(node)
    with log_path.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {node.name}\n".encode())
        out.flush()
        forked = subprocess.run(["setsid", "--fork", *nspawn_command(p, node)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, check=False)
    if forked.returncode != 0:
        raise HardwayError(f"node {node.name}: cannot start systemd-nspawn (exit {forked.returncode}); see {log_path}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = nspawn_processes(p).get(node.name)
        if pid:
            (p.node_dir(node) / "nspawn.pid").write_text(f"{pid}\n")
            return pid
        time.sleep(0.02)
    raise HardwayError(f"node {node.name}: systemd-nspawn did not start; see {log_path}")


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


def ssh_check(p: LabPlan, node: LabNode, timeout: float = 5.0) -> str | None:
    """None if root can log in to the node with strict host-key checking, else why not."""
    import paramiko

    try:
        with socket.create_connection((str(node.address), 22), timeout=min(timeout, 2.0)):
            pass
    except OSError as exc:
        return f"port 22: {exc.strerror or exc}"
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(p.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(str(node.address), username="root", key_filename=str(p.ssh_key), timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=False, look_for_keys=False)
        _, stdout, _ = client.exec_command("true", timeout=timeout)
        code = stdout.channel.recv_exit_status()
        return None if code == 0 else f"`true` exited {code}"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return f"ssh: {type(exc).__name__}: {exc}"
    finally:
        client.close()


def _wait_ready(p: LabPlan, nodes: list[LabNode], timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def wait(node: LabNode) -> str | None:
        last = "not tried"
        while time.monotonic() < deadline:
            if node.name not in nspawn_processes(p):
                return f"its machine exited: {_log_tail(p.console_log(node))}"
            last = ssh_check(p, node) or ""
            if not last:
                return None
            time.sleep(0.2)
        return f"not SSH-ready after {timeout:.0f} s ({last})"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(nodes)))) as pool:
        problems = [(n, why) for n, why in zip(nodes, pool.map(wait, nodes), strict=True) if why]
    if problems:
        node, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HardwayError(
            f"lab {p.name}: node {node.name}: {why}{more}; console: {p.console_log(node)}; "
            f"`invoke lab.down --name {p.name}` removes the lab"
        )


def _start(p: LabPlan, node: LabNode) -> int:
    _ensure_node_network(p, node)
    _ensure_mounted(p, node)
    return _launch(p, node)


def _stop(p: LabPlan, node: str, pid: int | None, timeout: float = 30.0) -> None:
    """Power the machine off (SIGTERM to nspawn: a clean shutdown), SIGKILL if it hangs."""
    if pid is not None:
        _terminate({node: pid}, timeout)


def _terminate(pids: dict[str, int], timeout: float) -> list[str]:
    """Power machines off and wait; return the nodes that had to be killed.

    SIGTERM makes nspawn send the container's PID 1 its poweroff signal. A PID 1 that is still
    booting may not handle it yet (the kernel drops it), so the poweroff signal is repeated to
    PID 1 every second. After ``timeout`` a second SIGTERM (nspawn: "immediate termination"),
    then SIGKILL.
    """
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    next_nudge = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        if time.monotonic() >= next_nudge:
            next_nudge += 1.0
            for pid in pids.values():
                init = _init_pid(pid) if _alive(pid) else None
                if init is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(init, signal.SIGRTMIN + 4)  # systemd: SIGRTMIN+4 = poweroff
        time.sleep(0.05)
    killed = [node for node, pid in pids.items() if _alive(pid)]
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        alive = [pid for pid in pids.values() if _alive(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(pid) for pid in alive):
            time.sleep(0.05)
    return killed


def _umount(point: str) -> str:
    res = _run(["umount", point], check=False)
    if res.returncode == 0:
        return "unmounted"
    _run(["umount", "--lazy", point])
    return "lazily unmounted (was busy)"


# --------------------------------------------------------------------------------------------
# The lab as a whole


class Lab:
    """A handle on a lab: its plan, paths and inventory; stop/start single nodes."""

    def __init__(self, p: LabPlan) -> None:
        self.plan = p

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, {self.plan.subnet}, {len(self.plan.nodes)} nodes)"

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def state_dir(self) -> Path:
        return self.plan.state_dir

    @property
    def inventory_path(self) -> Path:
        return self.plan.inventory_path

    @cached_property
    def inventory(self) -> Inventory:
        from hardway import inventory

        return inventory.load(self.inventory_path)

    def pids(self) -> dict[str, int]:
        return nspawn_processes(self.plan)

    def stop_node(self, node: str, timeout: float = 30.0) -> None:
        stop_node(self.name, node, state_root=self.plan.state_root, timeout=timeout)

    def start_node(self, node: str, timeout: float = 120.0) -> None:
        start_node(self.name, node, state_root=self.plan.state_root, timeout=timeout)

    def status(self) -> list[NodeStatus]:
        return status(self.name, state_root=self.plan.state_root)


def _check_subnet_free(p: LabPlan) -> None:
    for other in recorded_labs(p.state_root):
        if other.name != p.name and other.subnet.overlaps(p.subnet):
            raise HardwayError(f"subnet {p.subnet} is taken by lab {other.name!r} ({other.subnet}); "
                               "pass another with --subnet")
        if other.name != p.name and iface_tag(other.name) == iface_tag(p.name):
            raise HardwayError(f"lab names {p.name!r} and {other.name!r} map to the same interface names "
                               f"(hw-{iface_tag(p.name)}); pick another name")
    for net in _host_networks(exclude_dev=p.bridge):
        if net.overlaps(p.subnet):
            raise HardwayError(f"subnet {p.subnet} overlaps {net}, already on this host; pass another "
                               "with --subnet")


def up(
    name: str = DEFAULT_NAME,
    controllers: int | None = None,
    workers: int | None = None,
    subnet: str | None = None,
    *,
    state_root: Path = STATE_ROOT,
    inventory_copy: Path | None = None,
    timeout: float | None = None,
    report: Report = print,
) -> Lab:
    """Boot the lab (or finish booting it) and wait until every node is SSH-ready.

    ``controllers``/``workers``/``subnet`` default to the recorded lab's, else 3, 2 and
    10.77.0.0/24. On a running lab it reports and changes nothing; asking for another shape is an
    error. Leftovers of a crashed run without a record are removed first. ``inventory_copy``: also
    write the inventory there (tasks.py: inventory/lab.yaml for the default lab).
    """
    check_name(name)
    preflight(report)
    recorded = load_plan(name, state_root)
    requested = plan(
        name,
        controllers if controllers is not None else recorded.controllers if recorded else DEFAULT_CONTROLLERS,
        workers if workers is not None else recorded.workers if recorded else DEFAULT_WORKERS,
        subnet or (recorded.subnet if recorded else DEFAULT_SUBNET),
        state_root,
    )
    with _locked(requested):
        p = load_plan(name, state_root)
        if p is not None:
            if (p.controllers, p.workers, p.subnet) != (requested.controllers, requested.workers, requested.subnet):
                raise HardwayError(
                    f"lab {name!r} exists with {p.controllers} controllers + {p.workers} workers on {p.subnet}; "
                    f"`invoke lab.down --name {name}` first to change it"
                )
        else:
            if _leftovers(requested):
                report(f"lab {name}: removing leftovers of an earlier run")
                _teardown(requested, report)
            p = requested
        running = nspawn_processes(p)
        todo = [n for n in p.nodes if n.name not in running]
        if not todo and all(ssh_check(p, n) is None for n in p.nodes):
            wrote = inventory_copy is not None and write_inventory(p, inventory_copy)
            report(f"lab {name} is already running ({len(p.nodes)} nodes on {p.subnet}, bridge {p.bridge}); "
                   "nothing changed" + (f" (rewrote {inventory_copy})" if wrote else ""))
            return Lab(p)
        fresh = recorded is None
        try:
            _check_subnet_free(p)
            started = time.monotonic()
            p.state_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(p.state_dir, 0o700)
            p.record_path.write_text(json.dumps(p.record(), indent=2) + "\n")
            if len(todo) < len(p.nodes):
                report(f"lab {name}: starting {', '.join(n.name for n in todo)} (the others are running)")
            authorized = _ensure_client_key(p)
            image = node_image(state_root)
            for node in p.nodes:
                prepare_node(p, node, image, authorized)
            _write_known_hosts(p)
            write_inventory(p, p.inventory_path)
            if inventory_copy is not None:
                write_inventory(p, inventory_copy)
            _ensure_bridge(p)
            for node in todo:
                _start(p, node)
            _wait_ready(p, list(p.nodes), timeout or 60.0 + 10.0 * len(todo))
            report(f"lab {name}: {len(p.nodes)} nodes SSH-ready in {time.monotonic() - started:.1f} s "
                   f"({p.controllers} controllers + {p.workers} workers on {p.subnet}; jumpbox {p.gateway} on "
                   f"{p.bridge}); inventory {inventory_copy or p.inventory_path}")
            return Lab(p)
        except HardwayError:
            raise  # it names the console log to read and `lab.down` to clean up: the lab stays to inspect
        except BaseException as exc:
            # A killed run is resumed by the next lab.up; a fresh one that crashed or was interrupted
            # (Ctrl-C) is undone, so no machine, mount or netns outlives the error.
            if fresh:
                with contextlib.suppress(Exception):
                    _teardown(p, lambda _m: None)
            if isinstance(exc, OSError):
                raise HardwayError(f"lab {name}: {exc.strerror or exc}: {exc.filename or ''}"
                                   + ("; nothing was left behind" if fresh else
                                      f"; `invoke lab.down --name {name}` removes the lab")) from None
            raise


def get(name: str = DEFAULT_NAME, state_root: Path = STATE_ROOT) -> Lab:
    """The recorded lab ``name``; a one-line error if there is none."""
    p = load_plan(name, state_root)
    if p is None:
        left = _leftovers(plan(name, 1, 0, DEFAULT_SUBNET, state_root)) if os.geteuid() == 0 else []
        if left:
            raise HardwayError(f"no lab named {name!r}, but a crashed run left {', '.join(left[:3])}"
                               f"{' ...' if len(left) > 3 else ''}; `invoke lab.down --name {name}` removes it")
        raise HardwayError(f"no lab named {name!r} (nothing in {state_root / name}); start it with "
                           f"`invoke lab.up --name {name}`")
    return Lab(p)


def stop_node(name: str, node: str, *, state_root: Path = STATE_ROOT, timeout: float = 30.0) -> None:
    """Power one node off, as if unplugged: its machine stops and its link goes down, so
    connections to it time out (not refused). Its disk is kept for start_node."""
    require_root("lab.stop_node")
    p = get(name, state_root).plan
    n = p.node(node)
    with _locked(p):
        _stop(p, n.name, nspawn_processes(p).get(n.name), timeout)
        merged = str(p.merged(n))
        if merged in lab_mounts(p):
            _umount(merged)
        if p.netns(n) in _netns_list():
            _run(["ip", "-n", p.netns(n), "link", "set", NODE_IFACE, "down"], check=False)


def start_node(name: str, node: str, *, state_root: Path = STATE_ROOT, timeout: float = 120.0) -> None:
    """Boot one node again (same disk) and wait until it is SSH-ready."""
    require_root("lab.start_node")
    p = get(name, state_root).plan
    n = p.node(node)
    with _locked(p):
        _ensure_bridge(p)
        _start(p, n)
        _wait_ready(p, [n], timeout)


@dataclass(frozen=True)
class NodeStatus:
    node: str
    address: str
    roles: str
    machine: str  # "running (pid N)" or "stopped"
    systemd: str  # systemctl is-system-running inside the node, or "-"
    ssh: str  # "ok" or why not


def _system_state(nspawn_pid: int) -> str:
    init = _init_pid(nspawn_pid)
    if init is None:
        return "no init"
    res = _run(["nsenter", f"--target={init}", "--all", "systemctl", "is-system-running"], check=False,
               timeout=15)
    out = (res.stdout or "").strip()
    if out:
        return out
    err = (res.stderr or "").strip().splitlines()
    return err[-1] if err else "?"


def status(name: str = DEFAULT_NAME, *, state_root: Path = STATE_ROOT) -> list[NodeStatus]:
    require_root("lab.status")
    p = get(name, state_root).plan
    running = nspawn_processes(p)
    rows = []
    for n in p.nodes:
        pid = running.get(n.name)
        if pid is None:
            rows.append(NodeStatus(n.name, str(n.address), ",".join(n.roles), "stopped", "-", "-"))
            continue
        why = ssh_check(p, n)
        rows.append(NodeStatus(n.name, str(n.address), ",".join(n.roles), f"running (pid {pid})",
                               _system_state(pid), "ok" if why is None else why))
    return rows


def format_status(rows: list[NodeStatus]) -> str:
    header = ("NODE", "ADDRESS", "ROLES", "MACHINE", "SYSTEMD", "SSH")
    table = [header] + [(r.node, r.address, r.roles, r.machine, r.systemd, r.ssh) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    )


def _leftovers(p: LabPlan) -> list[str]:
    found = [f"machine {node} (pid {pid})" for node, pid in nspawn_processes(p).items()]
    found += [f"mount {m}" for m in lab_mounts(p)]
    found += [f"netns {ns}" for ns in lab_netns(p)]
    found += [f"link {link}" for link in lab_links(p)]
    if p.state_dir.exists():
        found.append(f"state {p.state_dir}")
    return found


def _teardown(p: LabPlan, report: Report) -> list[str]:
    removed: list[str] = []
    procs = nspawn_processes(p)
    # Recorded pids whose command line still matches (a pid file alone is never trusted).
    for pid_file in p.state_dir.glob("nodes/*/nspawn.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if nspawn_node(_proc_argv(pid), p.state_dir) and _alive(pid):
                procs.setdefault(pid_file.parent.name, pid)
    # nspawn's lock on each machine's root dir, named by the overlay's device and inode: a
    # SIGKILLed nspawn leaves it behind.
    locks = []
    for point in lab_mounts(p):
        with contextlib.suppress(OSError):
            st = os.stat(point)
            locks.append(Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}"))
    if procs:
        killed = _terminate(procs, timeout=20.0)
        removed += [f"machine {node}" + (" (killed)" if node in killed else "") for node in sorted(procs)]
        for node in killed:
            report(f"lab {p.name}: {node} did not power off in time and was killed; its console ended: "
                   f"{_log_tail(p.console_log(node), 6)}")
        still = nspawn_processes(p)
        if still:
            raise HardwayError(f"lab {p.name}: machines still running after SIGKILL: {still}")
    for lock in locks:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    for point in lab_mounts(p):
        removed.append(f"mount {point} ({_umount(point)})")
    for ns in lab_netns(p):
        _run(["ip", "netns", "delete", ns], check=False)
        if ns in _netns_list():
            with contextlib.suppress(OSError):
                os.unlink(f"/run/netns/{ns}")
        removed.append(f"netns {ns}")
    links = lab_links(p)
    for link in sorted(links, key=lambda s: s == p.bridge):  # veths first, then the bridge
        if link in _links():
            _run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    for leftover in glob.glob(f"/run/systemd/nspawn/*/hw.{p.name}.*"):
        with contextlib.suppress(OSError):
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover)
            else:
                os.unlink(leftover)
    left = lab_mounts(p)
    if left:
        raise HardwayError(f"lab {p.name}: still mounted: {', '.join(left)}; not deleting {p.state_dir}")
    if p.state_dir.exists():
        shutil.rmtree(p.state_dir)
        removed.append(f"state {p.state_dir}")
    still = _leftovers(p)
    if still:
        raise HardwayError(f"lab {p.name}: could not remove: {', '.join(still)}")
    return removed


def down(name: str = DEFAULT_NAME, *, state_root: Path = STATE_ROOT, report: Report = print) -> list[str]:
    """Remove the lab: machines (graceful poweroff, then SIGKILL), mounts, netns, links, state.
    Also what a crashed or killed run left behind. Returns what was removed."""
    require_root("lab.down")
    p = load_plan(name, state_root) or plan(name, 1, 0, DEFAULT_SUBNET, state_root)
    with _locked(p):
        removed = _teardown(p, report)
        with contextlib.suppress(OSError):
            (state_root / f".{name}.lock").unlink()
    if removed:
        counts: dict[str, int] = {}
        for r in removed:
            kind = r.split(" ", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        killed = sum(1 for r in removed if r.endswith("(killed)"))
        parts = [f"{v} {k}{'s' if v > 1 and k not in ('netns', 'state') else ''}" for k, v in counts.items()]
        report(f"lab {name}: removed " + ", ".join(parts).replace("1 state", "state dir")
               + (f" ({killed} machines did not power off in time and were killed)" if killed else ""))
    else:
        report(f"lab {name}: nothing to remove")
    return removed

