"""Provisional: what the chapters install, for the lab to hide from nodes.

Being replaced by the Chapter registry (issue 8): these become derived from each chapter's
declaration. Callers use only these two functions.
"""

from __future__ import annotations


def distributed_units() -> tuple[str, ...]:
    """Unit files hardway installs at /etc/systemd/system/<unit>."""
    return ("etcd.service", "kube-apiserver.service", "kube-controller-manager.service",
            "kube-scheduler.service", "kubelet.service", "kube-proxy.service", "containerd.service")


def distributed_binaries() -> tuple[str, ...]:
    """Binaries hardway installs (basenames); the host's copies are hidden from lab nodes."""
    return ("etcd", "etcdctl", "etcdutl", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
            "kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "runc", "crictl")
