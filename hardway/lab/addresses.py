"""A lab's layout: names, the address plan, the texts that follow from them, and its record.

Everything here follows from a lab's name, size and subnet; the only I/O is reading and writing
the lab's own record files (lab.json, inventory.yaml) in its state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hardway import localfs
from hardway.errors import HardwayError

STATE_ROOT = Path("/var/lib/hardway/labs")
DEFAULT_NAME = "lab"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
DEFAULT_CONTROLLERS = 3
DEFAULT_WORKERS = 2
DEFAULT_LOADBALANCERS = 1  # lb-0: HAProxy in front of the apiservers (0 or 1: more would need a shared VIP)
SERVICE_CIDR = ipaddress.IPv4Network("10.32.0.0/24")
CLUSTER_CIDR = ipaddress.IPv4Network("10.200.0.0/16")
# Subnets handed out by free_subnet() (tests, benchmarks): away from the default lab's.
SCRATCH_POOL = ipaddress.IPv4Network("10.78.0.0/16")
CONTROLLER_OFFSET = 10  # controller-i at .10+i
WORKER_OFFSET = 20  # worker-i at .20+i
LOADBALANCER_OFFSET = 5  # lb-0 at .5, the API endpoint
MAX_CONTROLLERS = WORKER_OFFSET - CONTROLLER_OFFSET
NODE_IFACE = "eth0"

# The workers' runtime: Debian's containerd, runc and containernetworking-plugins on the host
# (scripts/setup.sh installs them), hidden from the nodes like etcd, so hardway installs them.
LAB_RUNTIME = (("containerd", "/usr/bin/containerd"),
               ("containerd-shim-runc-v2", "/usr/bin/containerd-shim-runc-v2"), ("ctr", "/usr/bin/ctr"),
               ("runc", "/usr/sbin/runc"), ("bridge", "/usr/lib/cni/bridge"),
               ("host-local", "/usr/lib/cni/host-local"), ("loopback", "/usr/lib/cni/loopback"))

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
_SHORT_TAG = re.compile(r"^[a-z0-9]{1,6}$")
_MAX_NODES = 999  # veth names carry the index: hw-<6>-<3>p is 14 characters


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
    """The machine's name for nspawn, and the name of its own cgroup."""
    return f"hw.{name}.{node}"


def owned_by(name: str, entry: str) -> bool:
    """True if ``entry`` (a netns or cgroup name) is ``hw.<name>.<node>`` of lab ``name``; node names
    carry no dot, so lab "a" never claims lab "a.b"'s (lab names carry none either)."""
    prefix = f"hw.{name}."
    return entry.startswith(prefix) and "." not in entry[len(prefix):] and len(entry) > len(prefix)


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
class LabLayout:
    """Everything about a lab that follows from its name, size and subnet: nodes, addresses,
    interface and namespace names, and where its state lives."""

    name: str
    subnet: ipaddress.IPv4Network
    controllers: int
    workers: int
    nodes: tuple[LabNode, ...]
    state_root: Path = STATE_ROOT
    loadbalancers: int = 0

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

    @property
    def lock_path(self) -> Path:
        return self.state_root / f".{self.name}.lock"

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
                "workers": self.workers, "loadbalancers": self.loadbalancers}

    @property
    def shape(self) -> str:
        lbs = f" + {self.loadbalancers} load balancer" if self.loadbalancers else ""
        return f"{self.controllers} controllers + {self.workers} workers{lbs}"


def _node_name(node: LabNode | str) -> str:
    return node if isinstance(node, str) else node.name


def layout(
    name: str = DEFAULT_NAME,
    controllers: int = DEFAULT_CONTROLLERS,
    workers: int = DEFAULT_WORKERS,
    subnet: str | ipaddress.IPv4Network = DEFAULT_SUBNET,
    state_root: Path = STATE_ROOT,
    loadbalancers: int = DEFAULT_LOADBALANCERS,
) -> LabLayout:
    """The address plan: controller-i at .10+i, worker-i at .20+i with pod_cidr 10.200.i.0/24, and
    the load balancer lb-0 at .5 (last in the node list, so the others keep their interface names)."""
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
    if loadbalancers not in (0, 1):
        raise HardwayError(f"{loadbalancers} load balancers: the lab runs 0 or 1 (more would need a virtual IP "
                           "they share)")
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
    for i in range(loadbalancers):
        nodes.append(LabNode(f"lb-{i}", len(nodes), net[LOADBALANCER_OFFSET + i], ("loadbalancer",)))
    return LabLayout(name=name, subnet=net, controllers=controllers, workers=workers, nodes=tuple(nodes),
                     state_root=state_root, loadbalancers=loadbalancers)


# --------------------------------------------------------------------------------------------
# Texts that follow from the layout


def render_inventory(p: LabLayout) -> str:
    """The lab's inventory YAML (deterministic for a host: the default lab's is shipped as inventory/lab.yaml)."""
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
        "# No kube-apiserver, kube-controller-manager or kube-scheduler here: their stand-ins run",
        "# (docs/stand-ins.md). Name the real ones (a path, or the kubernetes-server tarball's URL and",
        "# sha256) and the same lab runs them; name kubectl to have it on the controllers too.",
        "binaries:",
        *[f"  {name}: {{path: {path}}}" for name, path in LAB_RUNTIME],
        "  etcd: {path: /usr/bin/etcd}",
        "  etcdctl: {path: /usr/bin/etcdctl}",
        "",
        f"# Lab subnet {p.subnet} on bridge {p.bridge}; the jumpbox (this host) is {p.gateway}.",
        "nodes:",
    ]
    for n in p.nodes:
        roles = ", ".join(n.roles)
        extra = f", pod_cidr: {n.pod_cidr}" if n.pod_cidr else ""
        if "loadbalancer" in n.roles:
            lines.append("  # HAProxy (the host's Debian package) in front of the apiservers: the API endpoint")
        lines.append(f"  - {{name: {n.name}, address: {n.address}, roles: [{roles}]{extra}}}")
    return "\n".join(lines) + "\n"


def render_hosts(p: LabLayout) -> str:
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
        # No PAM: every exec would open a logind session and start and stop user@0 and
        # user-runtime-dir@0 for nothing. Key-only root login needs no PAM.
        "UsePAM no\n"
    )


def known_hosts_line(node: LabNode, public_key: str) -> str:
    """``name,address keytype base64`` (the key's comment dropped)."""
    keytype, blob = public_key.split()[:2]
    return f"{node.name},{node.address} {keytype} {blob}\n"


# --------------------------------------------------------------------------------------------
# The lab's record on disk


def write_inventory(p: LabLayout, path: Path) -> bool:
    """Write the lab's inventory to ``path`` if its content differs; True if it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    change = localfs.ensure_file(path, render_inventory(p).encode(), 0o644)
    return change in (localfs.Change.WRITTEN, localfs.Change.REWRITTEN)


def write_record(p: LabLayout) -> None:
    """lab.json: what ``up`` was asked (name, subnet, size); ``load_layout`` reads it back."""
    localfs.ensure_file(p.record_path, (json.dumps(p.record(), indent=2) + "\n").encode(), 0o644)


def load_layout(name: str, state_root: Path = STATE_ROOT) -> LabLayout | None:
    """The layout recorded by ``up`` for lab ``name``, or None if there is none (or it is unreadable)."""
    path = state_root / check_name(name) / "lab.json"
    try:
        rec = json.loads(path.read_text())
        # a lab recorded before it had a load balancer has none
        return layout(rec["name"], int(rec["controllers"]), int(rec["workers"]), rec["subnet"], state_root,
                      int(rec.get("loadbalancers", 0)))
    except (OSError, ValueError, KeyError, TypeError, HardwayError):
        return None


def recorded_labs(state_root: Path = STATE_ROOT) -> list[LabLayout]:
    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(state_root)):
            if _NAME.match(entry):
                found = load_layout(entry, state_root)
                if found is not None:
                    out.append(found)
    return out
