"""Chapter control-plane: kube-apiserver, kube-controller-manager and kube-scheduler on every controller.

Planned here (units with the flags the tutorial gets wrong set right, certificates, kubeconfigs,
the encryption config, the apiserver->kubelet RBAC); it is applied with the base Chapter's flow.
"""

from __future__ import annotations

from hardway import pki
from hardway.chapters.base import Chapter
from hardway.inventory import Inventory, Node
from hardway.paths import APISERVER_PORT, BIN, K8S_DIR, K8S_PKI
from hardway.planner import Planner

BINARIES = (("kube-apiserver", ("kube-apiserver",)),
            ("kube-controller-manager", ("kube-controller-manager",)),
            ("kube-scheduler", ("kube-scheduler",)),
            ("kubectl", ()))


def _bind_any(node: Node) -> str:
    return "::" if node.address.version == 6 else "0.0.0.0"


def kube_apiserver_argv(inv: Inventory, node: Node) -> list[str]:
    etcd_servers = ",".join(inv.etcd_client_url(c) for c in inv.controllers)
    return [
        f"{BIN}/kube-apiserver",
        f"--advertise-address={node.address}",
        f"--bind-address={_bind_any(node)}",
        f"--secure-port={APISERVER_PORT}",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NamespaceLifecycle,NodeRestriction,LimitRanger,ServiceAccount,"
        "DefaultStorageClass,ResourceQuota",
        f"--client-ca-file={K8S_PKI}/ca.crt",
        f"--tls-cert-file={K8S_PKI}/kube-apiserver.crt",
        f"--tls-private-key-file={K8S_PKI}/kube-apiserver.key",
        f"--etcd-servers={etcd_servers}",
        f"--etcd-cafile={K8S_PKI}/ca.crt",
        # The apiserver cert carries client EKU too: it is also the apiserver's etcd client cert.
        f"--etcd-certfile={K8S_PKI}/kube-apiserver.crt",
        f"--etcd-keyfile={K8S_PKI}/kube-apiserver.key",
        f"--encryption-provider-config={K8S_DIR}/encryption-config.yaml",
        f"--kubelet-certificate-authority={K8S_PKI}/ca.crt",
        f"--kubelet-client-certificate={K8S_PKI}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={K8S_PKI}/apiserver-kubelet-client.key",
        # Dial kubelets by IP (in their certs' SANs): lab hostnames rarely resolve (failure mode 6).
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--runtime-config=api/all=true",
        f"--service-account-key-file={K8S_PKI}/service-accounts.pub",
        f"--service-account-signing-key-file={K8S_PKI}/service-accounts.key",
        f"--service-account-issuer={inv.api_endpoint.url}",
        # Always given: without it the `kubernetes` Service lands outside the apiserver cert.
        f"--service-cluster-ip-range={inv.service_cidr}",
        "--service-node-port-range=30000-32767",
        "--event-ttl=1h",
        "--v=2",
    ]


def kube_controller_manager_argv(inv: Inventory, node: Node) -> list[str]:
    argv = [
        f"{BIN}/kube-controller-manager",
        f"--bind-address={_bind_any(node)}",
        f"--cluster-name={inv.cluster_name}",
        f"--cluster-cidr={inv.cluster_cidr}",
        "--allocate-node-cidrs=true",
        f"--service-cluster-ip-range={inv.service_cidr}",
        f"--cluster-signing-cert-file={K8S_PKI}/ca.crt",
        f"--cluster-signing-key-file={K8S_PKI}/ca.key",
        f"--root-ca-file={K8S_PKI}/ca.crt",
        f"--service-account-private-key-file={K8S_PKI}/service-accounts.key",
        f"--kubeconfig={K8S_DIR}/kube-controller-manager.kubeconfig",
        "--leader-elect=true",
        "--use-service-account-credentials=true",
        "--v=2",
    ]
    # Allocate node CIDRs of the size the inventory gives the workers.
    sizes = {w.pod_cidr.prefixlen for w in inv.workers if w.pod_cidr is not None}
    if len(sizes) == 1:
        argv.insert(5, f"--node-cidr-mask-size={sizes.pop()}")
    return argv


def kube_scheduler_argv(inv: Inventory, node: Node) -> list[str]:
    return [f"{BIN}/kube-scheduler", f"--config={K8S_DIR}/config/kube-scheduler.yaml", "--v=2"]


def plan_files(p: Planner) -> None:
    api, cm, sched = ("kube-apiserver",), ("kube-controller-manager",), ("kube-scheduler",)
    s = p.state
    for name, services in BINARIES:
        p.binary(BIN, name, services)
    p.pki(f"{K8S_PKI}/ca.crt", s.cert("ca"), api + cm)
    p.pki(f"{K8S_PKI}/ca.key", s.key("ca"), cm, secret=True)  # the controller-manager signs CSRs
    p.pki(f"{K8S_PKI}/kube-apiserver.crt", s.cert("kube-apiserver"), api)
    p.pki(f"{K8S_PKI}/kube-apiserver.key", s.key("kube-apiserver"), api, secret=True)
    p.pki(f"{K8S_PKI}/apiserver-kubelet-client.crt", s.cert("apiserver-kubelet-client"), api)
    p.pki(f"{K8S_PKI}/apiserver-kubelet-client.key", s.key("apiserver-kubelet-client"), api, secret=True)
    p.pki(f"{K8S_PKI}/service-accounts.key", s.key("service-accounts"), api + cm, secret=True)
    p.pki(f"{K8S_PKI}/service-accounts.pub", s.public_key("service-accounts"), api)
    p.pki(f"{K8S_DIR}/encryption-config.yaml", s.encryption_config, api, secret=True)
    p.pki(f"{K8S_DIR}/kube-controller-manager.kubeconfig", s.kubeconfig("kube-controller-manager"), cm,
          secret=True)
    p.pki(f"{K8S_DIR}/kube-scheduler.kubeconfig", s.kubeconfig("kube-scheduler"), sched, secret=True)
    p.pki(f"{K8S_DIR}/admin.kubeconfig", s.kubeconfig("admin-local"), (), secret=True)
    p.template(f"{K8S_DIR}/config/kube-scheduler.yaml", "configs/kube-scheduler.yaml.j2", sched,
               kubeconfig=f"{K8S_DIR}/kube-scheduler.kubeconfig")
    p.unit("kube-apiserver", kube_apiserver_argv(p.inv, p.node))
    p.unit("kube-controller-manager", kube_controller_manager_argv(p.inv, p.node))
    p.unit("kube-scheduler", kube_scheduler_argv(p.inv, p.node))
    # The binding must name exactly the CN the apiserver presents to kubelets (the catalogue's; a
    # certificate that drifted from it is pki.check's business). Applied once, not by a service.
    user = pki.spec_for(p.inv, "apiserver-kubelet-client").common_name
    p.template(f"{K8S_DIR}/rbac/apiserver-to-kubelet.yaml", "configs/apiserver-to-kubelet-rbac.yaml.j2",
               (), user=user)


class ControlPlaneChapter(Chapter):
    name = "control-plane"
    title = "Bootstrapping the Kubernetes control plane"
    summary = ("The apiserver is the cluster's front door: every component and kubectl talk to it, and it alone "
               "talks to etcd. The controller manager and the scheduler run beside it on every controller and "
               "elect one leader each.")
    task = "bootstrap-control-plane"
    units = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    binaries = tuple(name for name, _ in BINARIES)

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return inv.controllers

    def plan_files(self, p: Planner) -> None:
        plan_files(p)


CHAPTER = ControlPlaneChapter()
