"""Where things live on a node: one place for the paths several chapters and checks share."""

from __future__ import annotations

from hardway import inventory_rules

BIN = "/usr/local/bin"
UNIT_DIR = "/etc/systemd/system"
ETCD_DIR = "/etc/etcd"
K8S_DIR = "/etc/kubernetes"
K8S_PKI = f"{K8S_DIR}/pki"
KUBELET_DIR = "/var/lib/kubelet"
KUBE_PROXY_DIR = "/var/lib/kube-proxy"
CNI_BIN = "/opt/cni/bin"
CNI_CONF = "/etc/cni/net.d"  # also containerd's default conf_dir (its default bin_dir is CNI_BIN)
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_SOCKET = "unix:///var/run/containerd/containerd.sock"
APISERVER_PORT = inventory_rules.APISERVER_PORT  # where every apiserver listens (the inventory checks the endpoint)


def unit_file(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}.service"
