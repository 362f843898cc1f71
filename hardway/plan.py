"""Pure planning: every file a node receives, per chapter, as ``File`` objects.

No I/O but reading the PKI state files (and hashing local binaries). Who gets what follows
FIELD-NOTES: controllers get the CA cert (and the CA key, for the controller-manager's signing
only), the apiserver's certs, the service-account pair, the encryption config, the
controller-manager/scheduler/admin kubeconfigs and their *own* etcd member cert; a worker gets
only its own kubelet cert/key/kubeconfig, the kube-proxy kubeconfig and the CA cert. No node
ever receives another node's key.

Command lines are built here as argv lists (``*_argv``) and written into the unit templates by
the ``systemd_exec`` filter of ``hardway.render``; the etcd chapter reuses ``etcd_argv``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hardway import binaries, pki
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.kubeconfig import LOCAL_APISERVER
from hardway.render import render
from hardway.state import PkiState, etcd_cert_name, kubelet_cert_name

CHAPTERS = ("etcd", "control-plane", "workers")

BIN = "/usr/local/bin"
UNIT_DIR = "/etc/systemd/system"
ETCD_DIR = "/etc/etcd"
K8S_DIR = "/etc/kubernetes"
K8S_PKI = f"{K8S_DIR}/pki"
KUBELET_DIR = "/var/lib/kubelet"
KUBE_PROXY_DIR = "/var/lib/kube-proxy"
CNI_BIN = "/opt/cni/bin"
CNI_CONF = "/etc/cni/net.d"  # also containerd's default conf_dir (its default bin_dir is CNI_BIN)
CONTAINERD_SOCKET = "unix:///var/run/containerd/containerd.sock"
# The kubelet's resolv.conf: the upstream servers systemd-resolved uses, not its 127.0.0.53 stub
# (a stub makes CoreDNS forward to itself and crash-loop: FIELD-NOTES failure mode 7).
KUBELET_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"

# The controllers' own kubeconfigs dial the local apiserver there (a load balancer forwards to it).
APISERVER_PORT = urlsplit(LOCAL_APISERVER).port or 6443

ETCD_BINARIES = ("etcd", "etcdctl")
CONTROL_PLANE_BINARIES = (("kube-apiserver", ("kube-apiserver",)),
                          ("kube-controller-manager", ("kube-controller-manager",)),
                          ("kube-scheduler", ("kube-scheduler",)),
                          ("kubectl", ()))
WORKER_BINARIES = ((BIN, "kubelet", ("kubelet",)), (BIN, "kube-proxy", ("kube-proxy",)),
                   (BIN, "containerd", ("containerd",)), (BIN, "containerd-shim-runc-v2", ("containerd",)),
                   (BIN, "ctr", ()), (BIN, "runc", ()), (BIN, "crictl", ()),
                   (CNI_BIN, "bridge", ()), (CNI_BIN, "host-local", ()), (CNI_BIN, "loopback", ()))


# --------------------------------------------------------------------------------------------
# Command lines


def _bind_any(node: Node) -> str:
    return "::" if node.address.version == 6 else "0.0.0.0"


def etcd_argv(inv: Inventory, node: Node) -> list[str]:
    """etcd's command line on controller ``node``: TLS for clients and peers, all members named."""
    peer_url, client_url = inv.etcd_peer_url(node), inv.etcd_client_url(node)
    initial_cluster = ",".join(f"{c.name}={inv.etcd_peer_url(c)}" for c in inv.controllers)
    return [
        f"{BIN}/etcd",
        f"--name={node.name}",
        f"--cert-file={ETCD_DIR}/etcd.crt",
        f"--key-file={ETCD_DIR}/etcd.key",
        f"--peer-cert-file={ETCD_DIR}/etcd.crt",
        f"--peer-key-file={ETCD_DIR}/etcd.key",
        f"--trusted-ca-file={ETCD_DIR}/ca.crt",
        f"--peer-trusted-ca-file={ETCD_DIR}/ca.crt",
        "--client-cert-auth",
        "--peer-client-cert-auth",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--listen-peer-urls={peer_url}",
        f"--listen-client-urls={client_url},https://127.0.0.1:2379",
        f"--advertise-client-urls={client_url}",
        f"--initial-cluster-token={inv.cluster_name}",
        f"--initial-cluster={initial_cluster}",
        "--initial-cluster-state=new",
        f"--data-dir={inv.etcd.data_dir}",
        f"--heartbeat-interval={inv.etcd.heartbeat_ms}",
        f"--election-timeout={inv.etcd.election_ms}",
        "--logger=zap",  # 3.4 defaults to the deprecated capnslog; 3.5 to zap
    ]


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


# --------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Planner:
    inv: Inventory
    node: Node
    state: PkiState
    cache_dir: Path | None
    chapter: str = ""
    files: list[File] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self.missing.append(path)
            return None

    def pki(self, target: str, source: Path, services: Iterable[str], secret: bool = False) -> None:
        data = self._read(source)
        if data is None:
            return
        # A certificate or key damaged on disk is never shipped: `invoke pki` reissues it (or, for
        # the CA, says how to restore it).
        readable = {".crt": pki.read_cert, ".key": pki.read_key}.get(source.suffix)
        if readable is not None and readable(source) is None:
            self.damaged.append(source)
        self.add(target, data, services, secret=secret)

    def add(self, target: str, data: bytes | str, services: Iterable[str], secret: bool = False,
            mode: int = 0o644) -> None:
        content = data.encode() if isinstance(data, str) else data
        self.files.append(File(path=target, mode=0o600 if secret else mode, content=content,
                               services=tuple(services), secret=secret, chapter=self.chapter))

    def template(self, target: str, template: str, services: Iterable[str], **context: object) -> None:
        self.add(target, render(template, **context), services)

    def unit(self, name: str, argv: list[str]) -> None:
        self.template(f"{UNIT_DIR}/{name}.service", f"units/{name}.service.j2", (name,),
                      argv=argv, node=self.node, inv=self.inv)

    def binary(self, directory: str, name: str, services: Iterable[str]) -> None:
        """Add ``name`` if its source resolves to a local file; else leave it out (preflight's job)."""
        if self.cache_dir is not None:
            source = binaries.resolve(self.inv, name, self.cache_dir)
        else:  # no cache to look in: only local files count
            entry = self.inv.binaries.get(name)
            source = entry.path if entry is not None else None
        if source is not None and source.is_file():
            f = File(path=f"{directory}/{name}", mode=0o755, source=source, services=tuple(services),
                     chapter=self.chapter)
            entry = self.inv.binaries.get(name)
            if entry is not None and entry.path is not None:  # a URL source was checked when fetched
                binaries.check_sha256(entry, f.sha256, source)
            self.files.append(f)


def _etcd(p: _Planner) -> None:
    svc = ("etcd",)
    for name in ETCD_BINARIES:
        p.binary(BIN, name, svc)
    member = etcd_cert_name(p.node)
    p.pki(f"{ETCD_DIR}/ca.crt", p.state.cert("ca"), svc)
    p.pki(f"{ETCD_DIR}/etcd.crt", p.state.cert(member), svc)
    p.pki(f"{ETCD_DIR}/etcd.key", p.state.key(member), svc, secret=True)
    p.unit("etcd", etcd_argv(p.inv, p.node))


def _control_plane(p: _Planner) -> None:
    api, cm, sched = ("kube-apiserver",), ("kube-controller-manager",), ("kube-scheduler",)
    s = p.state
    for name, services in CONTROL_PLANE_BINARIES:
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


def _containerd_config_version(inv: Inventory) -> int:
    """Config version 3 for containerd 2.x (the default), version 2 for containerd 1.x."""
    version = inv.versions.get("containerd", "2")
    return 2 if version.lstrip("v").split(".")[0] in ("0", "1") else 3


def _workers(p: _Planner) -> None:
    kubelet, proxy, ctrd = ("kubelet",), ("kube-proxy",), ("containerd",)
    s, node, inv = p.state, p.node, p.inv
    assert node.pod_cidr is not None  # every worker has one (inventory validation)
    for directory, name, services in WORKER_BINARIES:
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
    p.template("/etc/containerd/config.toml", "configs/containerd-config.toml.j2", ctrd,
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


_CHAPTER_PLANS = {"etcd": _etcd, "control-plane": _control_plane, "workers": _workers}


def node_chapters(node: Node) -> tuple[str, ...]:
    """The chapters that put files on ``node``, in order."""
    return tuple(c for c in CHAPTERS
                 if (c == "workers" and node.is_worker) or (c != "workers" and node.is_controller))


def node_files(inv: Inventory, node: str | Node, state: PkiState, *, chapters: Iterable[str] | None = None,
               cache_dir: Path | None = None) -> list[File]:
    """Everything ``node`` receives (limited to ``chapters`` if given), in chapter order.

    Binaries are included when their source resolves to a local file (a fetched URL source is
    looked up in ``cache_dir``; without one only ``path`` sources count), else left out.

    Raises HardwayError naming every missing PKI file ("... missing: run `invoke pki`").
    """
    n = inv.node(node if isinstance(node, str) else node.name)
    wanted = CHAPTERS if chapters is None else tuple(chapters)
    unknown = [c for c in wanted if c not in CHAPTERS]
    if unknown:
        raise HardwayError(f"unknown chapter(s) {', '.join(unknown)}; known: {', '.join(CHAPTERS)}")
    p = _Planner(inv, n, state, cache_dir)
    for chapter in node_chapters(n):
        if chapter in wanted:
            p.chapter = chapter
            _CHAPTER_PLANS[chapter](p)
    if p.missing:
        if not state.root.is_dir():
            raise HardwayError(f"PKI state {state.root} missing: run `invoke pki` (or pass --pki-dir)")
        names = [_relative(m, state.root) for m in dict.fromkeys(p.missing)]
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        raise HardwayError(f"{n.name}: PKI files in {state.root} missing: {', '.join(names[:5])}{more}: "
                           "run `invoke pki`")
    if p.damaged:
        names = [_relative(m, state.root) for m in dict.fromkeys(p.damaged)]
        raise HardwayError(f"{n.name}: PKI files in {state.root} are damaged (not a whole PEM certificate or "
                           f"key): {', '.join(names)}: run `invoke pki`")
    seen: set[str] = set()
    for f in p.files:
        if f.path in seen:
            raise HardwayError(f"{n.name}: {f.path} planned twice")  # a planning bug, never user input
        seen.add(f.path)
    return p.files


def chapter_files(inv: Inventory, node: str | Node, state: PkiState, chapter: str,
                  cache_dir: Path | None = None) -> list[File]:
    """What ``chapter`` puts on ``node`` (empty if the node takes no part in it)."""
    return node_files(inv, node, state, chapters=(chapter,), cache_dir=cache_dir)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

