"""Chapter workers: containerd, runc, the CNI plugins, kubelet and kube-proxy on every worker.

Planned here (each worker gets only its own kubelet credentials); it is applied with the base
Chapter's flow.
"""

from __future__ import annotations

from hardway.chapters.base import Chapter
from hardway.inventory import Inventory, Node
from hardway.paths import BIN, CNI_BIN, CNI_CONF, CONTAINERD_CONFIG, CONTAINERD_SOCKET, KUBE_PROXY_DIR, KUBELET_DIR
from hardway.planner import Planner
from hardway.state import kubelet_cert_name

BINARIES = ((BIN, "kubelet", ("kubelet",)), (BIN, "kube-proxy", ("kube-proxy",)),
            (BIN, "containerd", ("containerd",)), (BIN, "containerd-shim-runc-v2", ("containerd",)),
            (BIN, "ctr", ()), (BIN, "runc", ()), (BIN, "crictl", ()),
            (CNI_BIN, "bridge", ()), (CNI_BIN, "host-local", ()), (CNI_BIN, "loopback", ()))
# The kubelet's resolv.conf: the upstream servers systemd-resolved uses, not its 127.0.0.53 stub
# (a stub makes CoreDNS forward to itself and crash-loop: FIELD-NOTES failure mode 7).
KUBELET_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"


def containerd_argv(inv: Inventory, node: Node) -> list[str]:
    return [f"{BIN}/containerd", "--config=/etc/containerd/config.toml"]


def kubelet_argv(inv: Inventory, node: Node) -> list[str]:
    return [
        f"{BIN}/kubelet",
        f"--config={KUBELET_DIR}/kubelet-config.yaml",
        f"--kubeconfig={KUBELET_DIR}/kubeconfig",
        f"--node-ip={node.address}",
        # The node name must be the inventory name: the kubelet cert says system:node:<name>.
        f"--hostname-override={node.name}",
        "--register-node=true",
        "--v=2",
    ]


def kube_proxy_argv(inv: Inventory, node: Node) -> list[str]:
    return [f"{BIN}/kube-proxy", f"--config={KUBE_PROXY_DIR}/kube-proxy-config.yaml"]


def _containerd_config_version(inv: Inventory) -> int:
    """Config version 3 for containerd 2.x (the default), version 2 for containerd 1.x."""
    version = inv.versions.get("containerd", "2")
    return 2 if version.lstrip("v").split(".")[0] in ("0", "1") else 3


def plan_files(p: Planner) -> None:
    kubelet, proxy, ctrd = ("kubelet",), ("kube-proxy",), ("containerd",)
    s, node, inv = p.state, p.node, p.inv
    assert node.pod_cidr is not None  # every worker has one (inventory validation)
    for directory, name, services in BINARIES:
        p.binary(directory, name, services)
    own = kubelet_cert_name(node)
    p.pki(f"{KUBELET_DIR}/ca.crt", s.cert("ca"), kubelet)
    p.pki(f"{KUBELET_DIR}/kubelet.crt", s.cert(own), kubelet)
    p.pki(f"{KUBELET_DIR}/kubelet.key", s.key(own), kubelet, secret=True)
    p.pki(f"{KUBELET_DIR}/kubeconfig", s.kubeconfig(own), kubelet, secret=True)
    p.template(f"{KUBELET_DIR}/kubelet-config.yaml", "configs/kubelet-config.yaml.j2", kubelet,
               cluster_dns=str(inv.cluster_dns_ip), cluster_domain=inv.cluster_domain,
               pod_cidr=str(node.pod_cidr), ca_file=f"{KUBELET_DIR}/ca.crt",
               cert_file=f"{KUBELET_DIR}/kubelet.crt", key_file=f"{KUBELET_DIR}/kubelet.key",
               resolv_conf=KUBELET_RESOLV_CONF, runtime_endpoint=CONTAINERD_SOCKET)
    p.pki(f"{KUBE_PROXY_DIR}/kubeconfig", s.kubeconfig("kube-proxy"), proxy, secret=True)
    p.template(f"{KUBE_PROXY_DIR}/kube-proxy-config.yaml", "configs/kube-proxy-config.yaml.j2", proxy,
               kubeconfig=f"{KUBE_PROXY_DIR}/kubeconfig", cluster_cidr=str(inv.cluster_cidr),
               hostname=node.name)
    p.template(CONTAINERD_CONFIG, "configs/containerd-config.toml.j2", ctrd,
               version=_containerd_config_version(inv))
    # containerd's CRI plugin watches the CNI conf dir itself: no restart for these.
    default_route = "::/0" if node.pod_cidr.version == 6 else "0.0.0.0/0"
    p.template(f"{CNI_CONF}/10-bridge.conf", "configs/10-bridge.conf.j2", (),
               pod_cidr=str(node.pod_cidr), default_route=default_route)
    p.template(f"{CNI_CONF}/99-loopback.conf", "configs/99-loopback.conf.j2", ())
    # Applied by restarting the loaders: modules first, so the bridge sysctls exist.
    p.template("/etc/modules-load.d/hardway.conf", "configs/modules-load.conf.j2", ("systemd-modules-load",),
               modules=["overlay", "br_netfilter"])
    p.template("/etc/sysctl.d/99-hardway.conf", "configs/sysctl.conf.j2", ("systemd-sysctl",),
               settings=[("net.bridge.bridge-nf-call-iptables", "1"),
                         ("net.bridge.bridge-nf-call-ip6tables", "1"),
                         ("net.ipv4.ip_forward", "1")])
    p.unit("containerd", containerd_argv(inv, node))
    p.unit("kubelet", kubelet_argv(inv, node))
    p.unit("kube-proxy", kube_proxy_argv(inv, node))


class WorkersChapter(Chapter):
    name = "workers"
    title = "Bootstrapping the Kubernetes worker nodes"
    summary = ("Each worker runs containerd (with runc and the CNI plugins) to run pods, the kubelet to register "
               "the node and start its pods, and kube-proxy to route Service traffic.")
    task = "bootstrap-workers"
    units = ("containerd", "kubelet", "kube-proxy")
    binaries = tuple(name for _, name, _ in BINARIES)

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return inv.workers

    def plan_files(self, p: Planner) -> None:
        plan_files(p)


CHAPTER = WorkersChapter()
