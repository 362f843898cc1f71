"""What the workers chapter puts on each worker: binaries, certificates, kubeconfigs, configs, units.

Each worker gets only its own kubelet credentials. kubelet and kube-proxy run as hardway's stand-ins
(hardway.standins) when the inventory names no binary for them. Two things depend on the node and
on the containerd binary rather than on the inventory alone, so they are decided here from what is
known: the kubelet's ``resolvConf`` (from the node's facts, see ``node.resolv_conf_choice``; without
facts, as in ``invoke render``, the default /etc/resolv.conf) and containerd's config schema
(version 2 for containerd 1.x, 3 for 2.x: ``versions.containerd``, else asked from the binary).
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

from hardway import binaries, flagspec, standins
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN, CNI_BIN, CNI_CONF, CONTAINERD_CONFIG, CONTAINERD_SOCKET, KUBE_PROXY_DIR, KUBELET_DIR
from hardway.planner import Planner
from hardway.state import kubelet_cert_name
from hardway.templates import render

CHAPTER = "workers"
KUBELET, KUBE_PROXY, CONTAINERD = "kubelet", "kube-proxy", "containerd"
UNITS = (CONTAINERD, KUBELET, KUBE_PROXY)
PINNED_KUBERNETES = "1.32.3"  # the flag data's version (hardway/data/kubernetes/1.32): the stand-ins'
# (directory, name, services restarted when it changes, required): crictl is optional (a debugging tool)
BINARIES = ((BIN, KUBELET, (KUBELET,), True), (BIN, KUBE_PROXY, (KUBE_PROXY,), True),
            (BIN, CONTAINERD, (CONTAINERD,), True), (BIN, "containerd-shim-runc-v2", (CONTAINERD,), True),
            (BIN, "ctr", (), True), (BIN, "runc", (), True), (BIN, "crictl", (), False),
            (CNI_BIN, "bridge", (), True), (CNI_BIN, "host-local", (), True), (CNI_BIN, "loopback", (), True))
STANDIN_COMPONENTS = (KUBELET, KUBE_PROXY)

KUBELET_CONFIG = f"{KUBELET_DIR}/kubelet-config.yaml"
KUBELET_CA = f"{KUBELET_DIR}/ca.crt"
KUBELET_CERT, KUBELET_KEY = f"{KUBELET_DIR}/kubelet.crt", f"{KUBELET_DIR}/kubelet.key"
KUBELET_KUBECONFIG = f"{KUBELET_DIR}/kubeconfig"
KUBE_PROXY_CONFIG = f"{KUBE_PROXY_DIR}/kube-proxy-config.yaml"
CNI_BRIDGE, CNI_LOOPBACK = f"{CNI_CONF}/10-bridge.conf", f"{CNI_CONF}/99-loopback.conf"
CTR = f"{BIN}/ctr"
CONTAINERD_SOCKET_PATH = CONTAINERD_SOCKET.removeprefix("unix://")
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"  # the kubelet's own default; replaced per node from facts
CGROUP_DRIVER = "systemd"  # kubelet cgroupDriver and containerd SystemdCgroup: they must agree
KUBELET_HEALTHZ, KUBE_PROXY_HEALTHZ, KUBELET_PORT = 10248, 10256, 10250


def kubernetes_version(inv: Inventory) -> str:
    return inv.versions.get("kubernetes", PINNED_KUBERNETES).lstrip("v")


def is_standin(inv: Inventory, component: str) -> bool:
    """kubelet / kube-proxy with no binary in the inventory run as hardway's stand-in."""
    return component in STANDIN_COMPONENTS and component not in inv.binaries


def standin_covered(inv: Inventory) -> bool:
    """True if the flag data covers the inventory's Kubernetes version (the stand-ins are built from it)."""
    try:
        return flagspec.minor_of(kubernetes_version(inv)) in flagspec.available_versions()
    except ValueError:
        return False


def standin(inv: Inventory, component: str) -> File:
    """The stand-in at the inventory's Kubernetes version; at the pinned one when the flag data does not
    cover it (planning goes on, so `render` works; preflight then stops the apply, naming the field)."""
    version = kubernetes_version(inv) if standin_covered(inv) else PINNED_KUBERNETES
    return standins.standin_file(component, version, chapter=CHAPTER)


def label(inv: Inventory, component: str) -> str:
    return f"{component} (stand-in)" if is_standin(inv, component) else component


# --- containerd's version: the config schema depends on it ---------------------------------------

_ASKED: dict[tuple[str, int, int], str | None] = {}


def _ask_binary(path: Path) -> str | None:
    """``containerd --version`` of a binary that runs here (same architecture), remembered per file."""
    from hardway.chapters.etcd.preflight import elf_arch

    st = path.stat()
    key = (str(path), st.st_ino, st.st_mtime_ns)
    if key not in _ASKED:
        found = None
        if elf_arch(path) == platform.machine():
            try:
                out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20)
                m = re.search(r"\bv?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
                found = m.group(1) if m else None
            except (OSError, subprocess.TimeoutExpired):
                found = None
        _ASKED[key] = found
    return _ASKED[key]


def containerd_version(inv: Inventory, cache_dir: Path | None) -> tuple[str | None, str]:
    """(version, where it came from): the inventory's versions.containerd, else the binary's answer."""
    if "containerd" in inv.versions:
        return inv.versions["containerd"].lstrip("v"), "versions.containerd"
    source = _containerd_source(inv, cache_dir)
    if source is not None:
        return _ask_binary(source), f"{source} --version"
    return None, "no containerd binary"


def binary_version(inv: Inventory, cache_dir: Path | None) -> str | None:
    """What the containerd binary itself says, when it runs here (None otherwise)."""
    source = _containerd_source(inv, cache_dir)
    return _ask_binary(source) if source is not None else None


def _containerd_source(inv: Inventory, cache_dir: Path | None) -> Path | None:
    if cache_dir is not None:
        source = binaries.resolve(inv, CONTAINERD, cache_dir)
    else:
        entry = inv.binaries.get(CONTAINERD)
        source = entry.path if entry is not None else None
    return source if source is not None and source.is_file() else None


def config_schema(version: str | None) -> int:
    """containerd's config ``version``: 2 for containerd 1.x, 3 for 2.x (and when unknown: the
    tutorial's containerd is 2.x; preflight refuses an unknown version before anything is pushed)."""
    if version is None:
        return 3
    return 2 if version.split(".")[0] in ("0", "1") else 3


# --- the files ---------------------------------------------------------------------------------


def kubelet_argv(inv: Inventory, node: Node) -> list[str]:
    return [
        f"{BIN}/kubelet",
        f"--config={KUBELET_CONFIG}",
        f"--kubeconfig={KUBELET_KUBECONFIG}",
        f"--node-ip={node.address}",
        # The node name must be the inventory name: the kubelet cert says system:node:<name>.
        f"--hostname-override={node.name}",
        # No --register-node: deprecated upstream; registerNode is set in the config file.
        "--v=2",
    ]


def kube_proxy_argv(inv: Inventory, node: Node) -> list[str]:
    return [f"{BIN}/kube-proxy", f"--config={KUBE_PROXY_CONFIG}"]


def containerd_argv(inv: Inventory, node: Node) -> list[str]:
    return [f"{BIN}/containerd", f"--config={CONTAINERD_CONFIG}"]


def kubelet_config(inv: Inventory, node: Node, resolv_conf: str) -> bytes:
    return render("configs/kubelet-config.yaml.j2", cluster_dns=str(inv.cluster_dns_ip),
                  cluster_domain=inv.cluster_domain, pod_cidr=str(node.pod_cidr), ca_file=KUBELET_CA,
                  cert_file=KUBELET_CERT, key_file=KUBELET_KEY, resolv_conf=resolv_conf,
                  runtime_endpoint=CONTAINERD_SOCKET, cgroup_driver=CGROUP_DRIVER,
                  healthz_port=KUBELET_HEALTHZ).encode()


def kubelet_config_file(inv: Inventory, node: Node, resolv_conf: str) -> File:
    return File(KUBELET_CONFIG, 0o644, kubelet_config(inv, node, resolv_conf), services=(KUBELET,), chapter=CHAPTER)


def plan_files(p: Planner) -> None:
    s, node, inv = p.state, p.node, p.inv
    if node.pod_cidr is None:  # the inventory requires one on every worker; never reached from a loaded one
        raise HardwayError(f"{node.name}: a worker needs a pod_cidr in the inventory")
    for directory, name, services, _ in BINARIES:
        if directory == BIN and is_standin(inv, name):
            p.files.append(standin(inv, name))
        else:
            p.binary(directory, name, services)
    own = kubelet_cert_name(node)
    kubelet, proxy, ctrd = (KUBELET,), (KUBE_PROXY,), (CONTAINERD,)
    p.pki(KUBELET_CA, s.cert("ca"), kubelet)
    p.pki(KUBELET_CERT, s.cert(own), kubelet)
    p.pki(KUBELET_KEY, s.key(own), kubelet, secret=True)
    p.pki(KUBELET_KUBECONFIG, s.kubeconfig(own), kubelet, secret=True)
    p.add(KUBELET_CONFIG, kubelet_config(inv, node, DEFAULT_RESOLV_CONF), kubelet)
    p.pki(f"{KUBE_PROXY_DIR}/kubeconfig", s.kubeconfig("kube-proxy"), proxy, secret=True)
    p.template(KUBE_PROXY_CONFIG, "configs/kube-proxy-config.yaml.j2", proxy,
               kubeconfig=f"{KUBE_PROXY_DIR}/kubeconfig", cluster_cidr=str(inv.cluster_cidr),
               hostname=node.name, healthz=f"0.0.0.0:{KUBE_PROXY_HEALTHZ}")
    version, _ = containerd_version(inv, p.cache_dir)
    p.template(CONTAINERD_CONFIG, "configs/containerd-config.toml.j2", ctrd, version=config_schema(version),
               systemd_cgroup=CGROUP_DRIVER == "systemd")
    # containerd's CRI plugin watches the CNI conf dir itself: no restart for these.
    default_route = "::/0" if node.pod_cidr.version == 6 else "0.0.0.0/0"
    p.template(CNI_BRIDGE, "configs/10-bridge.conf.j2", (), pod_cidr=str(node.pod_cidr), default_route=default_route)
    p.template(CNI_LOOPBACK, "configs/99-loopback.conf.j2", ())
    p.unit(CONTAINERD, containerd_argv(inv, node))
    p.unit(KUBELET, kubelet_argv(inv, node))
    p.unit(KUBE_PROXY, kube_proxy_argv(inv, node))
