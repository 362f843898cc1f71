"""The inventory: one YAML file describing the cluster, validated into frozen typed objects.

Every problem is reported as one line naming file, line, field and what to do::

    inventory/x.yaml:14: nodes[2].address: '10.0.0.300' is not an IPv4 or IPv6 address

Reading is ``hardway.yamlfields`` (lines, types, YAML 1.1's surprises such as ``on`` for true and
``0600`` for 384 refused); this module holds the schema and the rules, each one because something
downstream would otherwise break later and less clearly: a certificate field X.509 refuses, a
range kube-apiserver refuses, an address no peer can reach. docs/inventory.md lists them all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from hardway.errors import HardwayError
from hardway.inventory_audit import AuditSettings, parse_audit
from hardway.inventory_rules import (
    APISERVER_PORT,
    IPV6_NODE_MASK_MAX_DIFF,
    KUBELET_CN_PREFIX,
    MAX_PODS,
    POD_CIDR_MIN_ADDRESSES,
    SERVICE_CIDR_MAX_HOST_BITS,
    SHA256,
    USER_NAME,
    VERSION,
    X509_CN_MAX,
    address_problem,
    data_dir_problem,
    dns_name_problem,
    url_problem,
)
from hardway.yamlfields import Field, FieldError, IPAddress, IPNetwork, compose, decode, shown

InventoryError = FieldError  # a bad inventory: ``file:line: field: problem; fix``

KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
ROLES = ("controller", "worker", "loadbalancer")
ENCRYPTION_PROVIDERS = ("secretbox", "aesgcm", "aescbc")
# Cert families that take extra SANs from the inventory (like kubeadm's --apiserver-cert-extra-sans).
SAN_FAMILIES = ("kube-apiserver", "etcd", "kubelet")
# The binaries hardway distributes: the keys `binaries` takes. The chapters declare what they install
# (hardway.chapters.distributed_binaries()); the inventory sits below them, so it keeps the list as
# data and tests/test_inventory_rules.py keeps the two equal.
BINARY_NAMES = ("etcd", "etcdctl", "etcdutl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                "kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl", "bridge",
                "host-local", "loopback")
# The components `versions` takes (the tutorial's downloads).
VERSION_COMPONENTS = ("kubernetes", "etcd", "containerd", "runc", "cni_plugins", "crictl")

@dataclass(frozen=True)
class Node:
    name: str
    address: IPAddress
    roles: frozenset[str]
    pod_cidr: IPNetwork | None = None

    @property
    def is_controller(self) -> bool:
        return "controller" in self.roles

    @property
    def is_worker(self) -> bool:
        return "worker" in self.roles

    @property
    def is_loadbalancer(self) -> bool:
        return "loadbalancer" in self.roles


@dataclass(frozen=True)
class ApiEndpoint:
    address: IPAddress
    port: int
    hostname: str | None = None

    @property
    def url(self) -> str:
        return https_url(self.address, self.port)


@dataclass(frozen=True)
class SSHSettings:
    user: str
    port: int
    known_hosts: Path
    key: Path | None = None
    become: str = "root"  # "root": log in as root; "sudo": passwordless sudo
    connect_timeout: int = 10
    command_timeout: int = 300


@dataclass(frozen=True)
class BinarySource:
    name: str
    path: Path | None = None
    url: str | None = None
    sha256: str | None = None
    # "file:line: binaries.NAME.sha256", so a file found not to match later names the line to fix.
    sha256_where: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class EtcdSettings:
    data_dir: str = "/var/lib/etcd"
    heartbeat_ms: int = 100
    election_ms: int = 1000


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster_name: str
    cluster_domain: str
    service_cidr: IPNetwork
    cluster_cidr: IPNetwork
    api_endpoint: ApiEndpoint
    key_algorithm: str
    ssh: SSHSettings
    nodes: tuple[Node, ...]
    versions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    binaries: Mapping[str, BinarySource] = field(default_factory=lambda: MappingProxyType({}))
    extra_sans: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    cert_validity_days: int = 365
    ca_validity_days: int = 3650
    renew_within_days: int = 30
    encryption_provider: str = "secretbox"
    encryption_provider_given: bool = False  # else an existing config's provider is kept (clusters made before)
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    warnings: tuple[str, ...] = ()
    # "file:line: versions.NAME" of each given version, so a later check can name the line to fix
    versions_where: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False,
                                              repr=False)

    @property
    def controllers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_controller)

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_worker)

    @property
    def loadbalancers(self) -> tuple[Node, ...]:
        """Nodes running hardway's HAProxy in front of the apiservers (none: the endpoint is a
        controller's own address, or a load balancer the user runs)."""
        return tuple(n for n in self.nodes if n.is_loadbalancer)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise HardwayError(f"{self.path}: no node named {shown(name)} (known: {known})")

    @property
    def service_ip(self) -> IPAddress:
        """The `kubernetes` Service's cluster IP: the first address of the service CIDR."""
        return self.service_cidr[1]

    @property
    def cluster_dns_ip(self) -> IPAddress:
        """CoreDNS's cluster IP, by convention the tenth address of the service CIDR."""
        return self.service_cidr[10]

    def etcd_client_url(self, node: Node) -> str:
        return https_url(node.address, 2379)

    def etcd_peer_url(self, node: Node) -> str:
        return https_url(node.address, 2380)


def https_url(address: IPAddress, port: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"https://{host}:{port}"


# --------------------------------------------------------------------------------------------
# Loading


_TOP = ("cluster", "api_endpoint", "versions", "pki", "encryption", "audit", "ssh", "binaries", "etcd", "nodes")


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file; raise InventoryError (one line) on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(
            f"{path}: inventory not found; pass --inventory PATH or set HARDWAY_INVENTORY "
            "(inventory/sample.yaml is a template to copy)"
        ) from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc.strerror or exc}") from None
    return parse(decode(raw, str(path)), str(path), base=path.resolve().parent)


def parse(text: str, source: str = "<inventory>", base: Path | None = None) -> Inventory:
    """Validate inventory YAML text. Relative paths in it are relative to ``base``."""
    base = base or Path.cwd()
    root = compose(text, source)
    if root is None:
        raise InventoryError(f"{source}:1: the inventory is empty; copy inventory/sample.yaml to start")
    top = Field(source, root, "")
    return _build(top, top.mapping(_TOP), source, base)


def _build(top: Field, f: dict[str, Field], source: str, base: Path) -> Inventory:
    cluster_f = top.get(f, "cluster").required()
    c = cluster_f.mapping(("name", "domain", "service_cidr", "cluster_cidr"))
    name = _dns_name(cluster_f.get(c, "name"), label_only=True)
    domain = _dns_name(cluster_f.get(c, "domain"), "cluster.local")
    service_f, cluster_cidr_f = cluster_f.get(c, "service_cidr"), cluster_f.get(c, "cluster_cidr")
    service_cidr, cluster_cidr = service_f.required().cidr(), cluster_cidr_f.required().cidr()
    if service_cidr.version == cluster_cidr.version and service_cidr.overlaps(cluster_cidr):
        raise cluster_cidr_f.fail(
            f"{cluster_cidr} overlaps service_cidr {service_cidr}; pod and service networks must be disjoint"
        )
    if service_cidr.num_addresses < 16:
        raise service_f.fail(f"{service_cidr} is too small; use at least a /{service_cidr.max_prefixlen - 4}")
    host_bits = service_cidr.max_prefixlen - service_cidr.prefixlen
    if host_bits > SERVICE_CIDR_MAX_HOST_BITS:
        longest = service_cidr.max_prefixlen - SERVICE_CIDR_MAX_HOST_BITS
        raise service_f.fail(f"{service_cidr} is too large: kube-apiserver refuses a service range shorter than "
                             f"/{longest} for IPv{service_cidr.version}; use /{longest} or longer")

    nodes = _nodes(top.get(f, "nodes").required(), service_cidr, cluster_cidr)
    controllers = [n for n in nodes if n.is_controller]
    api = _api_endpoint(top.get(f, "api_endpoint"), nodes, service_cidr, cluster_cidr)
    validity, ca_validity, renew, key_algorithm, extra_sans = _pki(top.get(f, "pki"))

    enc_f = top.get(f, "encryption")
    e = enc_f.mapping(("provider",)) if enc_f.present else {}
    provider = enc_f.get(e, "provider").choice(ENCRYPTION_PROVIDERS, "secretbox")
    provider_given = "provider" in e

    versions_f = top.get(f, "versions")
    versions = _versions(versions_f)
    versions_where = {name: versions_f.get(versions_f.mapping(VERSION_COMPONENTS, what="component"), name).where
                      for name in versions} if versions else {}
    warnings = []
    if len(controllers) % 2 == 0:
        warnings.append(
            f"{source}: {len(controllers)} controllers: an even number of etcd members tolerates no more "
            f"failures than {len(controllers) - 1}; use an odd number"
        )
    return Inventory(
        path=Path(source), cluster_name=name, cluster_domain=domain, service_cidr=service_cidr,
        cluster_cidr=cluster_cidr, api_endpoint=api, key_algorithm=key_algorithm, ssh=_ssh(top.get(f, "ssh"), base),
        nodes=tuple(nodes), versions=MappingProxyType(versions), versions_where=MappingProxyType(versions_where),
        binaries=MappingProxyType(_binaries(top.get(f, "binaries"), base)),
        extra_sans=MappingProxyType(extra_sans), cert_validity_days=validity,
        ca_validity_days=ca_validity, renew_within_days=renew, encryption_provider=provider,
        encryption_provider_given=provider_given,
        etcd=_etcd(top.get(f, "etcd")), audit=parse_audit(top.get(f, "audit")), warnings=tuple(warnings),
    )


def _dns_name(f: Field, default: str | None = None, label_only: bool = False) -> str:
    value = f.string(default)
    problem = dns_name_problem(value, label_only=label_only)
    if problem:
        raise f.fail(problem)
    return value


def _address(f: Field, alone: bool) -> IPAddress:
    address = f.required().ip()
    problem = address_problem(address, alone=alone, written=f.text("an address"))
    if problem:
        raise f.fail(problem)
    return address


def _node_name(f: Field, roles: set[str]) -> str:
    name = _dns_name(f)
    # Names end up as certificate CNs, which X.509 caps at 64 characters: a controller's is its
    # name (etcd member), a worker's is system:node:<name> (kubelet). Capping them also keeps
    # every file named after a node (kubelet-<name>.kubeconfig, ...) far below NAME_MAX.
    if "worker" in roles and len(KUBELET_CN_PREFIX + name) > X509_CN_MAX:
        most = X509_CN_MAX - len(KUBELET_CN_PREFIX)
        raise f.fail(f"{shown(name)} is too long for a worker: its kubelet "
                     f"certificate's CN {KUBELET_CN_PREFIX}<name> may hold {X509_CN_MAX} characters (X.509); "
                     f"use at most {most}")
    if len(name) > X509_CN_MAX:
        raise f.fail(f"{shown(name)} is too long: a controller's name is its etcd "
                     f"certificate's CN, which X.509 caps at {X509_CN_MAX} characters; use at most {X509_CN_MAX}")
    return name


def _nodes(nodes_f: Field, service_cidr: IPNetwork, cluster_cidr: IPNetwork) -> list[Node]:
    items = list(nodes_f.items())
    nodes: list[Node] = []
    seen_names: dict[str, int] = {}
    seen_addresses: dict[IPAddress, tuple[int, str]] = {}
    pod_cidrs: list[tuple[IPNetwork, str]] = []
    for item in items:
        n = item.mapping(("name", "address", "roles", "pod_cidr"))
        roles_f = item.get(n, "roles").required()
        roles: set[str] = set()
        for r in roles_f.items():
            role = r.string()
            if role not in ROLES:
                raise r.fail(f"{shown(role)} is not a role; use controller, worker and/or loadbalancer")
            roles.add(role)
        if not roles:
            raise roles_f.fail("needs at least one role: controller, worker and/or loadbalancer")
        if {"controller", "loadbalancer"} <= roles:
            # HAProxy listens on the endpoint port on every address of its node; 6443 is the apiserver's.
            raise roles_f.fail("a node cannot be both controller and loadbalancer: the load balancer in front of "
                               "the apiservers needs a machine of its own (or leave the loadbalancer role out and "
                               "use a controller's address as api_endpoint.address)")
        name_f = item.get(n, "name")
        name = _node_name(name_f, roles)
        if name in seen_names:
            raise name_f.fail(f"{shown(name)} is already used by nodes[{seen_names[name]}]; node names must be unique")
        seen_names[name] = len(nodes)
        addr_f = item.get(n, "address")
        address = _address(addr_f, alone=len(items) == 1)
        if address in seen_addresses:
            index, written = seen_addresses[address]
            spelled = "" if written == addr_f.text("an address") else f" (written there as {shown(written)})"
            raise addr_f.fail(f"{address} is already used by nodes[{index}]{spelled}; addresses must be unique")
        seen_addresses[address] = (len(nodes), addr_f.text("an address"))
        for net, label in ((service_cidr, "service_cidr"), (cluster_cidr, "cluster_cidr")):
            if address in net:
                raise addr_f.fail(f"{address} lies inside cluster.{label} {net}; node addresses must be outside it")
        if "controller" in roles and address.version != service_cidr.version:
            # kube-apiserver: "service IP family must match public address family" (its advertise address).
            raise addr_f.fail(f"{address} is IPv{address.version} but cluster.service_cidr {service_cidr} is "
                              f"IPv{service_cidr.version}: kube-apiserver needs its address in the service "
                              "range's family; use one family for both")
        pod_f = item.get(n, "pod_cidr")
        pod_cidr = None
        if "worker" in roles:
            pod_cidr = _pod_cidr(pod_f, cluster_cidr, pod_cidrs)
            pod_cidrs.append((pod_cidr, name))
        elif pod_f.present:
            raise pod_f.fail("only workers take a pod_cidr; remove it or add the worker role")
        nodes.append(Node(name=name, address=address, roles=frozenset(roles), pod_cidr=pod_cidr))
    if not nodes:
        raise nodes_f.fail("lists no nodes; add at least one controller")
    if not any(n.is_controller for n in nodes):
        raise nodes_f.fail("has no controller; give at least one node the controller role")
    return nodes


def _pod_cidr(f: Field, cluster_cidr: IPNetwork, others: list[tuple[IPNetwork, str]]) -> IPNetwork:
    pod_cidr = f.required().cidr()
    if pod_cidr.version != cluster_cidr.version or not pod_cidr.subnet_of(cluster_cidr):  # type: ignore[arg-type]
        raise f.fail(f"{pod_cidr} is not inside cluster.cluster_cidr {cluster_cidr}")
    if pod_cidr.num_addresses < POD_CIDR_MIN_ADDRESSES:
        need = pod_cidr.max_prefixlen - (POD_CIDR_MIN_ADDRESSES.bit_length() - 1)
        raise f.fail(f"{pod_cidr} has room for {max(pod_cidr.num_addresses - 3, 0)} pods, the kubelet runs up to "
                     f"{MAX_PODS} (maxPods); use a /{need} or larger")
    if pod_cidr.version == 6 and pod_cidr.prefixlen - cluster_cidr.prefixlen > IPV6_NODE_MASK_MAX_DIFF:
        raise f.fail(f"{pod_cidr} is more than {IPV6_NODE_MASK_MAX_DIFF} bits longer than cluster.cluster_cidr "
                     f"{cluster_cidr}, which kube-controller-manager's node CIDR allocator refuses; use a "
                     f"pod_cidr of /{cluster_cidr.prefixlen + IPV6_NODE_MASK_MAX_DIFF} or shorter, or a "
                     "smaller cluster_cidr")
    for other, other_name in others:
        if other.overlaps(pod_cidr):
            raise f.fail(f"{pod_cidr} overlaps {other_name}'s pod_cidr {other}; give each worker its own")
    return pod_cidr


def _api_endpoint(f: Field, nodes: list[Node], service_cidr: IPNetwork, cluster_cidr: IPNetwork) -> ApiEndpoint:
    a = f.mapping(("address", "port", "hostname")) if f.present else {}
    addr_f, port_f = f.get(a, "address"), f.get(a, "port")
    first = next(n for n in nodes if n.is_controller)
    balancers = [n for n in nodes if n.is_loadbalancer]
    if addr_f.present:
        address = _address(addr_f, alone=len(nodes) == 1)
    elif len(balancers) > 1:
        raise addr_f.fail(f"is required with {len(balancers)} load balancers ({', '.join(n.name for n in balancers)}): "
                          "give the address they share (a virtual IP such as keepalived's)")
    else:  # the load balancer's own address, else the first controller's
        address = balancers[0].address if balancers else first.address
    for net, label in ((service_cidr, "service_cidr"), (cluster_cidr, "cluster_cidr")):
        if address in net:
            raise addr_f.fail(f"{address} lies inside cluster.{label} {net}; use the load balancer's address")
    port = port_f.integer(APISERVER_PORT, 1, 65535)
    # A controller's own address (or loopback, on a single node) is served by that node's apiserver,
    # which listens on APISERVER_PORT only; any other address is a load balancer, free to map a
    # port of its own onto the controllers' 6443.
    owner = next((n for n in nodes if n.address == address), nodes[0] if address.is_loopback else None)
    if owner is not None and not owner.is_controller and not owner.is_loadbalancer:
        raise addr_f.fail(f"{address} is {owner.name}'s address, and only controllers run an apiserver; use a "
                          "controller's address or a load balancer's")
    if owner is not None and owner.is_controller and balancers:
        raise addr_f.fail(f"{address} is {owner.name}'s own address, but {balancers[0].name} is the load balancer "
                          f"in front of the apiservers; use its address ({balancers[0].address}), or drop its "
                          "loadbalancer role")
    if owner is not None and owner.is_controller and port != APISERVER_PORT:
        whose = f"{owner.name}'s own address" + ("" if addr_f.present else " (api_endpoint.address defaults to it)")
        raise port_f.fail(f"{port} is not where an apiserver listens: the endpoint is {whose}, and kube-apiserver "
                          f"serves on {APISERVER_PORT} there; use port {APISERVER_PORT}, or a load balancer's "
                          "address for another port")
    host_f = f.get(a, "hostname")
    hostname = _dns_name(host_f) if host_f.present else None
    return ApiEndpoint(address=address, port=port, hostname=hostname)


def _pki(f: Field) -> tuple[int, int, int, str, dict[str, tuple[str, ...]]]:
    p = f.mapping(("key_algorithm", "cert_validity_days", "ca_validity_days", "renew_within_days",
                   "extra_sans")) if f.present else {}
    key_algorithm = f.get(p, "key_algorithm").choice(KEY_ALGORITHMS, "ecdsa-p256")
    validity = f.get(p, "cert_validity_days").integer(365, 1, 3650)
    ca_validity = f.get(p, "ca_validity_days").integer(3650, 1, 36500)
    renew = f.get(p, "renew_within_days").integer(30, 0, 3650)
    if renew >= validity:
        raise f.get(p, "renew_within_days").fail(
            f"{renew} must be below cert_validity_days ({validity}), or every run would reissue everything"
        )
    if ca_validity <= renew:
        raise f.get(p, "ca_validity_days").fail(
            f"{ca_validity} is not longer than renew_within_days ({renew}): the CA would be due for renewal "
            f"from the day it is made, and every later run would stop at it; use more than {renew}"
        )
    if validity > ca_validity:
        raise f.get(p, "cert_validity_days").fail(
            f"{validity} is longer than ca_validity_days ({ca_validity}), and no certificate can outlive its "
            f"CA; use at most {ca_validity}, or lengthen ca_validity_days"
        )
    return validity, ca_validity, renew, key_algorithm, _extra_sans(f.get(p, "extra_sans"))


def _extra_sans(f: Field) -> dict[str, tuple[str, ...]]:
    if not f.present:
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for family, entries in f.mapping(SAN_FAMILIES, what="certificate family").items():
        sans: list[str] = []
        for e in entries.items():
            text = e.text("an IP address or a DNS name")
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                problem = dns_name_problem(text, wildcard=True)
            else:
                problem = address_problem(address, san=True, written=text)
                text = str(address)
            if problem:
                raise e.fail(problem)
            sans.append(text)
        out[family] = tuple(sans)
    return out


def _ssh(f: Field, base: Path) -> SSHSettings:
    s = f.mapping(("user", "port", "key", "known_hosts", "become", "connect_timeout", "command_timeout")) \
        if f.present else {}
    user_f = f.get(s, "user")
    user = user_f.string("root")
    if not USER_NAME.match(user):
        raise user_f.fail(f"{shown(user)} is not a user name (a letter or '_' first, then letters, digits, '_' or "
                          "'-', at most 31 characters)")
    become = f.get(s, "become").choice(("root", "sudo"), "root" if user == "root" else "sudo")
    if become == "root" and user != "root":
        raise f.get(s, "become").fail(f"'root' needs user: root (user is {shown(user)}); use become: sudo")
    known_hosts = f.get(s, "known_hosts").path_value(base, "~/.ssh/known_hosts")
    assert known_hosts is not None
    return SSHSettings(
        user=user, port=f.get(s, "port").integer(22, 1, 65535), known_hosts=known_hosts,
        key=f.get(s, "key").path_value(base), become=become,
        connect_timeout=f.get(s, "connect_timeout").integer(10, 1, 600),
        command_timeout=f.get(s, "command_timeout").integer(300, 1, 86400),
    )


def _binaries(f: Field, base: Path) -> dict[str, BinarySource]:
    if not f.present:
        return {}
    if not f.is_mapping:
        raise f.fail("expected a mapping of binary name to {path: ...} or {url: ..., sha256: ...}")
    out: dict[str, BinarySource] = {}
    for name, entry in f.mapping(BINARY_NAMES, what="binary").items():
        e = entry.mapping(("path", "url", "sha256"))
        path_f, url_f, sha_f = entry.get(e, "path"), entry.get(e, "url"), entry.get(e, "sha256")
        if path_f.present == url_f.present:
            raise entry.fail("give exactly one of path (a local file) or url (with sha256)")
        sha = sha_f.text("a sha256 (64 hex digits)").lower() if sha_f.present else None
        if sha is not None and not SHA256.match(sha):
            raise sha_f.fail(f"{shown(sha)} is not a sha256 (64 hex digits)")
        url = None
        if url_f.present:
            url = url_f.string()
            problem = url_problem(url)
            if problem:
                raise url_f.fail(problem)
            if sha is None:
                raise entry.fail("a url needs its sha256, so a tampered download is refused")
        path = path_f.path_value(base)
        if path is not None:
            try:
                is_dir = path.is_dir()
            except OSError as exc:
                raise path_f.fail(f"{shown(str(path))} cannot be checked: {exc.strerror}") from None
            if is_dir:
                raise path_f.fail(f"{shown(str(path))} is a directory; give the {name} binary file itself")
        out[name] = BinarySource(name=name, path=path, url=url, sha256=sha,
                                 sha256_where=sha_f.where if sha_f.present else "")
    return out


def _versions(f: Field) -> dict[str, str]:
    if not f.present:
        return {}
    if not f.is_mapping:
        raise f.fail("expected a mapping of component to version, such as etcd: '3.5.21'")
    out: dict[str, str] = {}
    for name, v in f.mapping(VERSION_COMPONENTS, what="component").items():
        value = v.scalar()
        if not isinstance(value, str):
            raise v.fail(f"expected a quoted version string such as '1.32.3', got {v.describe()}")
        if not VERSION.match(value):
            raise v.fail(f"{shown(value)} is not a version such as '1.32.3'")
        out[name] = value
    return out


def _etcd(f: Field) -> EtcdSettings:
    e = f.mapping(("data_dir", "heartbeat_ms", "election_ms")) if f.present else {}
    dir_f = f.get(e, "data_dir")
    data_dir = dir_f.string("/var/lib/etcd")
    problem = data_dir_problem(data_dir)
    if problem:
        raise dir_f.fail(problem)
    heartbeat = f.get(e, "heartbeat_ms").integer(100, 10, 10000)
    election = f.get(e, "election_ms").integer(1000, 50, 50000)
    if election < 5 * heartbeat:
        raise f.get(e, "election_ms").fail(
            f"{election} is under 5x heartbeat_ms ({heartbeat}); etcd advises about 10x"
        )
    return EtcdSettings(data_dir=data_dir, heartbeat_ms=heartbeat, election_ms=election)
