"""What the control-plane chapter puts on each controller: units, certificates, kubeconfigs, binaries.

The units carry what the tutorial gets wrong, set right: ``--service-cluster-ip-range`` (else the
``kubernetes`` Service IP is not in the apiserver's certificate), ``--kubelet-preferred-address-types``
(kubelets are dialed by IP), ``--encryption-provider-config``, ``--service-account-issuer`` from the
API endpoint, and ``--etcd-servers`` over TLS to every member with a client certificate from etcd's own
CA. A component the inventory names no binary for runs as its stand-in (hardway.standins).
"""

from __future__ import annotations

from hardway import flagspec, pki, standins
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import APISERVER_PORT, BIN, K8S_DIR, K8S_PKI, unit_file
from hardway.pki.catalogue import APISERVER_ETCD_CLIENT, ETCD_CA_NAME, FRONT_PROXY_CA_NAME, FRONT_PROXY_CLIENT
from hardway.planner import Planner
from hardway.templates import render

APISERVER, CONTROLLER_MANAGER, SCHEDULER = "kube-apiserver", "kube-controller-manager", "kube-scheduler"
COMPONENTS = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)
KUBECTL = "kubectl"
PORTS = {APISERVER: APISERVER_PORT, CONTROLLER_MANAGER: 10257, SCHEDULER: 10259}
PINNED_VERSION = "1.32.3"  # the flag data's version (hardway/data/kubernetes/1.32): the stand-ins' too

CA, CA_KEY = f"{K8S_PKI}/ca.crt", f"{K8S_PKI}/ca.key"
ETCD_CA = f"{K8S_PKI}/etcd-ca.crt"
ETCD_CLIENT_CERT, ETCD_CLIENT_KEY = f"{K8S_PKI}/{APISERVER_ETCD_CLIENT}.crt", f"{K8S_PKI}/{APISERVER_ETCD_CLIENT}.key"
ENCRYPTION_CONFIG = f"{K8S_DIR}/encryption-config.yaml"
AUDIT_POLICY = f"{K8S_DIR}/config/audit-policy.yaml"
FRONT_PROXY_CA = f"{K8S_PKI}/{FRONT_PROXY_CA_NAME}.crt"
FRONT_PROXY_CERT, FRONT_PROXY_KEY = f"{K8S_PKI}/{FRONT_PROXY_CLIENT}.crt", f"{K8S_PKI}/{FRONT_PROXY_CLIENT}.key"
ADMIN_KUBECONFIG = f"{K8S_DIR}/admin.kubeconfig"  # admin-local: https://127.0.0.1:6443, for kubectl on the node
RBAC_TEMPLATE = "configs/apiserver-to-kubelet-rbac.yaml.j2"


def version(inv: Inventory) -> str:
    """The Kubernetes version the stand-ins and the flag checks assume."""
    return inv.versions.get("kubernetes", PINNED_VERSION).lstrip("v")


def is_standin(inv: Inventory, component: str) -> bool:
    """A component the inventory names no binary for runs as hardway's stand-in."""
    return component not in inv.binaries


def label(inv: Inventory, component: str) -> str:
    return f"{component} (stand-in)" if component in COMPONENTS and is_standin(inv, component) else component


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
        f"--client-ca-file={CA}",
        f"--tls-cert-file={K8S_PKI}/kube-apiserver.crt",
        f"--tls-private-key-file={K8S_PKI}/kube-apiserver.key",
        f"--etcd-servers={etcd_servers}",
        # etcd has a CA of its own: it trusts nothing the cluster CA signed (a worker's certificate).
        f"--etcd-cafile={ETCD_CA}",
        f"--etcd-certfile={ETCD_CLIENT_CERT}",
        f"--etcd-keyfile={ETCD_CLIENT_KEY}",
        f"--encryption-provider-config={ENCRYPTION_CONFIG}",
        f"--kubelet-certificate-authority={CA}",
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
        # The audit log (the tutorial's apiserver keeps one; hardway's did not): metadata of every request.
        f"--audit-policy-file={AUDIT_POLICY}",
        f"--audit-log-path={inv.audit.log_path}",
        f"--audit-log-maxage={inv.audit.max_age_days}",
        f"--audit-log-maxbackup={inv.audit.max_backups}",
        f"--audit-log-maxsize={inv.audit.max_size_mb}",
        *aggregation_flags(inv, node),
        "--v=2",
    ]


def aggregation_flags(inv: Inventory, node: Node) -> list[str]:
    """The aggregation layer (extension apiservers such as metrics-server, hence `kubectl top`): the
    apiserver proxies to them with a client certificate of the front-proxy CA, naming the user in headers."""
    return [
        f"--requestheader-client-ca-file={FRONT_PROXY_CA}",
        f"--requestheader-allowed-names={pki.spec_for(inv, FRONT_PROXY_CLIENT).common_name}",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--proxy-client-cert-file={FRONT_PROXY_CERT}",
        f"--proxy-client-key-file={FRONT_PROXY_KEY}",
        # No kube-proxy on this controller: reach an extension apiserver at its endpoint (pod) IP, not its
        # Service IP (which only kube-proxy's rules make routable).
        *([] if node.is_worker else ["--enable-aggregator-routing=true"]),
    ]


def kube_controller_manager_argv(inv: Inventory, node: Node) -> list[str]:
    argv = [
        f"{BIN}/kube-controller-manager",
        f"--bind-address={_bind_any(node)}",
        f"--cluster-name={inv.cluster_name}",
        f"--cluster-cidr={inv.cluster_cidr}",
        "--allocate-node-cidrs=true",
        f"--service-cluster-ip-range={inv.service_cidr}",
        f"--cluster-signing-cert-file={CA}",
        f"--cluster-signing-key-file={CA_KEY}",
        f"--root-ca-file={CA}",
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


ARGV = {APISERVER: kube_apiserver_argv, CONTROLLER_MANAGER: kube_controller_manager_argv,
        SCHEDULER: kube_scheduler_argv}
UNIT_PATHS = {c: unit_file(c) for c in COMPONENTS}


def standin(inv: Inventory, component: str, chapter: str) -> File:
    """The stand-in for ``component`` at the inventory's Kubernetes version (flag data must cover it)."""
    try:
        return standins.standin_file(component, version(inv), chapter=chapter)
    except HardwayError:
        where = inv.versions_where.get("kubernetes", f"{inv.path}: versions.kubernetes")
        have = ", ".join(flagspec.available_versions())
        raise HardwayError(f"{where}: {component} has no binary under binaries, and its stand-in exists for "
                           f"Kubernetes {have} only (not {version(inv)}); name the real binaries under binaries, or "
                           f"pin versions.kubernetes to '{PINNED_VERSION}'") from None


def plan_files(p: Planner) -> None:
    api, cm, sched = (APISERVER,), (CONTROLLER_MANAGER,), (SCHEDULER,)
    s = p.state
    for component in COMPONENTS:
        if is_standin(p.inv, component):  # same path, same services: only where the bytes come from differs
            p.files.append(standin(p.inv, component, p.chapter))
        else:
            p.binary(BIN, component, (component,))
    if KUBECTL in p.inv.binaries:  # for people on the controllers; hardway itself runs the jumpbox's
        p.binary(BIN, KUBECTL, ())
    p.pki(CA, s.cert(pki.CA_NAME), api + cm)
    p.pki(CA_KEY, s.key(pki.CA_NAME), cm, secret=True)  # the controller-manager signs CSRs: the only CA key on a node
    p.pki(f"{K8S_PKI}/kube-apiserver.crt", s.cert("kube-apiserver"), api)
    p.pki(f"{K8S_PKI}/kube-apiserver.key", s.key("kube-apiserver"), api, secret=True)
    p.pki(f"{K8S_PKI}/apiserver-kubelet-client.crt", s.cert("apiserver-kubelet-client"), api)
    p.pki(f"{K8S_PKI}/apiserver-kubelet-client.key", s.key("apiserver-kubelet-client"), api, secret=True)
    p.pki(ETCD_CA, s.cert(ETCD_CA_NAME), api)
    p.pki(ETCD_CLIENT_CERT, s.cert(APISERVER_ETCD_CLIENT), api)
    p.pki(ETCD_CLIENT_KEY, s.key(APISERVER_ETCD_CLIENT), api, secret=True)
    p.pki(FRONT_PROXY_CA, s.cert(FRONT_PROXY_CA_NAME), api)
    p.pki(FRONT_PROXY_CERT, s.cert(FRONT_PROXY_CLIENT), api)
    p.pki(FRONT_PROXY_KEY, s.key(FRONT_PROXY_CLIENT), api, secret=True)
    p.pki(f"{K8S_PKI}/service-accounts.key", s.key("service-accounts"), api + cm, secret=True)
    p.pki(f"{K8S_PKI}/service-accounts.pub", s.public_key("service-accounts"), api)
    p.pki(ENCRYPTION_CONFIG, s.encryption_config, api, secret=True)
    p.pki(f"{K8S_DIR}/kube-controller-manager.kubeconfig", s.kubeconfig("kube-controller-manager"), cm,
          secret=True)
    p.pki(f"{K8S_DIR}/kube-scheduler.kubeconfig", s.kubeconfig("kube-scheduler"), sched, secret=True)
    p.pki(ADMIN_KUBECONFIG, s.kubeconfig("admin-local"), (), secret=True)
    p.template(AUDIT_POLICY, "configs/audit-policy.yaml.j2", api)
    p.template(f"{K8S_DIR}/config/kube-scheduler.yaml", "configs/kube-scheduler.yaml.j2", sched,
               kubeconfig=f"{K8S_DIR}/kube-scheduler.kubeconfig")
    for component in COMPONENTS:
        p.unit(component, ARGV[component](p.inv, p.node))


def rbac_yaml(inv: Inventory) -> str:
    """The apiserver->kubelet RBAC, applied with kubectl from the jumpbox. The binding must name exactly
    the CN the apiserver presents to kubelets (the catalogue's; a certificate that drifted from it is
    pki.check's business)."""
    return render(RBAC_TEMPLATE, user=pki.spec_for(inv, "apiserver-kubelet-client").common_name)
