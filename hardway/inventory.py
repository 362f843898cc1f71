"""The inventory: one YAML file describing the cluster, validated into frozen typed objects.

Every problem is reported as one line naming file, line, field and what to do::

    inventory/x.yaml:14: nodes[2].address: '10.0.0.300' is not an IPv4 or IPv6 address

The YAML is composed into nodes (not loaded into plain dicts) so each value keeps its line, and
each scalar is checked for the type the field wants: YAML 1.1 reads ``on`` as true and ``0600``
as 384, which must be an error here, not a surprise later.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hardway.errors import HardwayError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
ROLES = ("controller", "worker")
ENCRYPTION_PROVIDERS = ("aescbc", "aesgcm")
# Cert families that take extra SANs from the inventory (like kubeadm's --apiserver-cert-extra-sans).
SAN_FAMILIES = ("kube-apiserver", "etcd", "kubelet")

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InventoryError(HardwayError):
    """A bad inventory: the message is ``file:line: field: problem``."""


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
    encryption_provider: str = "aescbc"
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    warnings: tuple[str, ...] = ()

    @property
    def controllers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_controller)

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_worker)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise HardwayError(f"{self.path}: no node named {name!r} (known: {known})")

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
# Loading: a cursor over composed YAML nodes that knows its field path and line.


class _Field:
    def __init__(self, source: str, node: yaml.Node | None, path: str, parent_line: int = 1) -> None:
        self.source = source
        self.node = node
        self.path = path
        self.line = node.start_mark.line + 1 if node is not None else parent_line

    def fail(self, message: str) -> InventoryError:
        return InventoryError(f"{self.source}:{self.line}: {self.path or '(top level)'}: {message}")

    @property
    def present(self) -> bool:
        return self.node is not None and not (
            isinstance(self.node, yaml.ScalarNode) and self.node.tag == "tag:yaml.org,2002:null"
        )

    def child(self, key: str | int, node: yaml.Node | None) -> _Field:
        path = f"{self.path}[{key}]" if isinstance(key, int) else (f"{self.path}.{key}" if self.path else key)
        return _Field(self.source, node, path, self.line)

    def mapping(self, allowed: tuple[str, ...]) -> dict[str, _Field]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.fail(f"expected a mapping with keys {', '.join(allowed)}, got {_kind(self.node)}")
        out: dict[str, _Field] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = self.child(str(key), key_node)
            if key not in allowed:
                raise where.fail(f"unknown field; expected one of: {', '.join(allowed)}")
            if key in out:
                raise where.fail("given twice; keep one")
            out[key] = self.child(key, value_node)
        return out

    def get(self, fields: dict[str, _Field], key: str) -> _Field:
        return fields.get(key) or self.child(key, None)

    def items(self) -> Iterator[_Field]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.fail(f"expected a list, got {_kind(self.node)}")
        for i, item in enumerate(self.node.value):
            yield self.child(i, item)

    def scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.fail(f"expected a single value, got {_kind(self.node)}")
        try:
            return _construct(self.node)
        except yaml.YAMLError:
            raise self.fail(f"cannot read {self.node.value!r} tagged {self.node.tag}; remove the tag") from None

    def required(self) -> _Field:
        if not self.present:
            raise self.fail("is required")
        return self

    def string(self, default: str | None = None) -> str:
        if not self.present:
            if default is None:
                raise self.fail("is required")
            return default
        value = self.scalar()
        if not isinstance(value, str):
            hint = " (YAML reads it as a boolean: quote it)" if isinstance(value, bool) else ""
            raise self.fail(f"expected a string, got {_describe(value)}{hint}")
        if not value.strip():
            raise self.fail("must not be empty")
        return value

    def integer(self, default: int, low: int, high: int) -> int:
        if not self.present:
            return default
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"expected a whole number from {low} to {high}, got {_describe(value)}")
        if not low <= value <= high:
            raise self.fail(f"{value} is out of range; use a number from {low} to {high}")
        return value

    def choice(self, options: tuple[str, ...], default: str) -> str:
        value = self.string(default)
        if value not in options:
            raise self.fail(f"{value!r} is not one of: {', '.join(options)}")
        return value

    def ip(self) -> IPAddress:
        raw = self.scalar() if self.present else None
        if raw is None:
            raise self.fail("is required")
        try:
            return ipaddress.ip_address(str(raw))
        except ValueError:
            raise self.fail(f"{raw!r} is not an IPv4 or IPv6 address") from None

    def cidr(self) -> IPNetwork:
        raw = self.scalar() if self.present else None
        if raw is None:
            raise self.fail("is required")
        text = str(raw)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.fail(f"{text!r} is not a CIDR such as 10.32.0.0/24") from None
        if "/" not in text:
            raise self.fail(f"{text!r} has no prefix length; write it as a CIDR such as {net}")
        if str(net) != text:
            raise self.fail(f"{text!r} has host bits set; the network is {net}")
        return net

    def dns_name(self, default: str | None = None, label_only: bool = False) -> str:
        value = self.string(default)
        pattern = _DNS_LABEL if label_only else _DNS_SUBDOMAIN
        kind = "an RFC 1123 label" if label_only else "an RFC 1123 DNS name"
        if len(value) > (63 if label_only else 253) or not pattern.match(value):
            raise self.fail(
                f"{value!r} is not {kind} (lower-case letters, digits and '-', starting and ending "
                "with a letter or digit)"
            )
        return value

    def path_value(self, base: Path, default: str | None = None) -> Path | None:
        if not self.present and default is None:
            return None
        text = self.string(default)
        p = Path(text).expanduser()
        return p if p.is_absolute() else (base / p)


def _kind(node: yaml.Node | None) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    try:
        return _describe(_construct(node))
    except yaml.YAMLError:
        return f"a value tagged {node.tag}"


def _construct(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return type(value).__name__


_TOP = ("cluster", "api_endpoint", "versions", "pki", "encryption", "ssh", "binaries", "etcd", "nodes")


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file; raise InventoryError (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            f"{path}: inventory not found; pass --inventory PATH or set HARDWAY_INVENTORY "
            "(inventory/sample.yaml is a template to copy)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from None
    return parse(text, str(path), base=path.resolve().parent)


def parse(text: str, source: str = "<inventory>", base: Path | None = None) -> Inventory:
    """Validate inventory YAML text. Relative paths in it are relative to ``base``."""
    base = base or Path.cwd()
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InventoryError(f"{source}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: YAML error: {exc}") from None
    top = _Field(source, root, "")
    if root is None:
        raise InventoryError(f"{source}:1: the inventory is empty; copy inventory/sample.yaml to start")
    fields = top.mapping(_TOP)
    return _build(top, fields, source, base)


def _build(top: _Field, f: dict[str, _Field], source: str, base: Path) -> Inventory:
    cluster_f = top.get(f, "cluster").required()
    c = cluster_f.mapping(("name", "domain", "service_cidr", "cluster_cidr"))
    name = cluster_f.get(c, "name").dns_name(label_only=True)
    domain = cluster_f.get(c, "domain").dns_name("cluster.local")
    service_cidr = cluster_f.get(c, "service_cidr").required().cidr()
    cluster_cidr = cluster_f.get(c, "cluster_cidr").required().cidr()
    if service_cidr.version == cluster_cidr.version and service_cidr.overlaps(cluster_cidr):
        raise cluster_f.get(c, "cluster_cidr").fail(
            f"{cluster_cidr} overlaps service_cidr {service_cidr}; pod and service networks must be disjoint"
        )
    if service_cidr.num_addresses < 16:
        raise cluster_f.get(c, "service_cidr").fail(f"{service_cidr} is too small; use at least a /28")

    nodes = _nodes(top.get(f, "nodes").required(), service_cidr, cluster_cidr)
    controllers = [n for n in nodes if n.is_controller]

    api = _api_endpoint(top.get(f, "api_endpoint"), controllers[0], service_cidr, cluster_cidr)
    pki_f = top.get(f, "pki")
    p = pki_f.mapping(("key_algorithm", "cert_validity_days", "ca_validity_days", "renew_within_days",
                       "extra_sans")) if pki_f.present else {}
    key_algorithm = pki_f.get(p, "key_algorithm").choice(KEY_ALGORITHMS, "ecdsa-p256")
    validity = pki_f.get(p, "cert_validity_days").integer(365, 1, 3650)
    ca_validity = pki_f.get(p, "ca_validity_days").integer(3650, 1, 36500)
    renew = pki_f.get(p, "renew_within_days").integer(30, 0, 3650)
    if renew >= validity:
        raise pki_f.get(p, "renew_within_days").fail(
            f"{renew} must be below cert_validity_days ({validity}), or every run would reissue everything"
        )
    extra_sans = _extra_sans(pki_f.get(p, "extra_sans"))

    enc_f = top.get(f, "encryption")
    e = enc_f.mapping(("provider",)) if enc_f.present else {}
    provider = enc_f.get(e, "provider").choice(ENCRYPTION_PROVIDERS, "aescbc")

    ssh = _ssh(top.get(f, "ssh"), base)
    binaries = _binaries(top.get(f, "binaries"), base)
    versions = _versions(top.get(f, "versions"))
    etcd = _etcd(top.get(f, "etcd"))

    warnings = []
    if len(controllers) % 2 == 0:
        warnings.append(
            f"{source}: {len(controllers)} controllers: an even number of etcd members tolerates no more "
            f"failures than {len(controllers) - 1}; use an odd number"
        )
    return Inventory(
        path=Path(source), cluster_name=name, cluster_domain=domain, service_cidr=service_cidr,
        cluster_cidr=cluster_cidr, api_endpoint=api, key_algorithm=key_algorithm, ssh=ssh,
        nodes=tuple(nodes), versions=MappingProxyType(versions), binaries=MappingProxyType(binaries),
        extra_sans=MappingProxyType(extra_sans), cert_validity_days=validity,
        ca_validity_days=ca_validity, renew_within_days=renew, encryption_provider=provider,
        etcd=etcd, warnings=tuple(warnings),
    )


def _nodes(nodes_f: _Field, service_cidr: IPNetwork, cluster_cidr: IPNetwork) -> list[Node]:
    nodes: list[Node] = []
    seen_names: dict[str, int] = {}
    seen_addresses: dict[IPAddress, int] = {}
    pod_cidrs: list[tuple[IPNetwork, _Field, str]] = []
    for item in nodes_f.items():
        n = item.mapping(("name", "address", "roles", "pod_cidr"))
        name_f = item.get(n, "name")
        name = name_f.dns_name()
        if name in seen_names:
            raise name_f.fail(f"{name!r} is already used by nodes[{seen_names[name]}]; node names must be unique")
        seen_names[name] = len(nodes)
        addr_f = item.get(n, "address").required()
        address = addr_f.ip()
        if address in seen_addresses:
            raise addr_f.fail(
                f"{address} is already used by nodes[{seen_addresses[address]}]; addresses must be unique"
            )
        seen_addresses[address] = len(nodes)
        for net, label in ((service_cidr, "service_cidr"), (cluster_cidr, "cluster_cidr")):
            if address in net:
                raise addr_f.fail(f"{address} lies inside cluster.{label} {net}; node addresses must be outside it")
        roles_f = item.get(n, "roles").required()
        roles: set[str] = set()
        for r in roles_f.items():
            role = r.string()
            if role not in ROLES:
                raise r.fail(f"{role!r} is not a role; use controller and/or worker")
            roles.add(role)
        if not roles:
            raise roles_f.fail("needs at least one role: controller and/or worker")
        pod_f = item.get(n, "pod_cidr")
        pod_cidr = None
        if "worker" in roles:
            pod_cidr = pod_f.required().cidr()
            if pod_cidr.version != cluster_cidr.version or not pod_cidr.subnet_of(cluster_cidr):  # type: ignore[arg-type]
                raise pod_f.fail(f"{pod_cidr} is not inside cluster.cluster_cidr {cluster_cidr}")
            for other, _, other_name in pod_cidrs:
                if other.overlaps(pod_cidr):
                    raise pod_f.fail(f"{pod_cidr} overlaps {other_name}'s pod_cidr {other}; give each worker its own")
            pod_cidrs.append((pod_cidr, pod_f, name))
        elif pod_f.present:
            raise pod_f.fail("only workers take a pod_cidr; remove it or add the worker role")
        nodes.append(Node(name=name, address=address, roles=frozenset(roles), pod_cidr=pod_cidr))
    if not nodes:
        raise nodes_f.fail("lists no nodes; add at least one controller")
    if not any(n.is_controller for n in nodes):
        raise nodes_f.fail("has no controller; give at least one node the controller role")
    return nodes


def _api_endpoint(f: _Field, first: Node, service_cidr: IPNetwork, cluster_cidr: IPNetwork) -> ApiEndpoint:
    a = f.mapping(("address", "port", "hostname")) if f.present else {}
    addr_f = f.get(a, "address")
    address = addr_f.ip() if addr_f.present else first.address
    for net, label in ((service_cidr, "service_cidr"), (cluster_cidr, "cluster_cidr")):
        if address in net:
            raise addr_f.fail(f"{address} lies inside cluster.{label} {net}; use the load balancer's address")
    port = f.get(a, "port").integer(6443, 1, 65535)
    host_f = f.get(a, "hostname")
    hostname = host_f.dns_name() if host_f.present else None
    return ApiEndpoint(address=address, port=port, hostname=hostname)


def _extra_sans(f: _Field) -> dict[str, tuple[str, ...]]:
    if not f.present:
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for family, entries in f.mapping(SAN_FAMILIES).items():
        sans: list[str] = []
        for e in entries.items():
            value = e.scalar()
            text = str(value) if value is not None else ""
            try:
                sans.append(str(ipaddress.ip_address(text)))
                continue
            except ValueError:
                pass
            if not _DNS_SUBDOMAIN.match(text) and not (text.startswith("*.") and _DNS_SUBDOMAIN.match(text[2:])):
                raise e.fail(f"{text!r} is neither an IP address nor a DNS name")
            sans.append(text)
        out[family] = tuple(sans)
    return out


def _ssh(f: _Field, base: Path) -> SSHSettings:
    s = f.mapping(("user", "port", "key", "known_hosts", "become", "connect_timeout", "command_timeout")) \
        if f.present else {}
    user = f.get(s, "user").string("root")
    become = f.get(s, "become").choice(("root", "sudo"), "root" if user == "root" else "sudo")
    if become == "root" and user != "root":
        raise f.get(s, "become").fail(f"'root' needs user: root (user is {user!r}); use become: sudo")
    known_hosts = f.get(s, "known_hosts").path_value(base, "~/.ssh/known_hosts")
    assert known_hosts is not None
    return SSHSettings(
        user=user, port=f.get(s, "port").integer(22, 1, 65535), known_hosts=known_hosts,
        key=f.get(s, "key").path_value(base), become=become,
        connect_timeout=f.get(s, "connect_timeout").integer(10, 1, 600),
        command_timeout=f.get(s, "command_timeout").integer(300, 1, 86400),
    )


def _binaries(f: _Field, base: Path) -> dict[str, BinarySource]:
    if not f.present:
        return {}
    out: dict[str, BinarySource] = {}
    if not isinstance(f.node, yaml.MappingNode):
        raise f.fail("expected a mapping of binary name to {path: ...} or {url: ..., sha256: ...}")
    names = tuple(k.value for k, _ in f.node.value if isinstance(k, yaml.ScalarNode))
    for name, entry in f.mapping(names).items():
        e = entry.mapping(("path", "url", "sha256"))
        path_f, url_f, sha_f = entry.get(e, "path"), entry.get(e, "url"), entry.get(e, "sha256")
        if path_f.present == url_f.present:
            raise entry.fail("give exactly one of path (a local file) or url (with sha256)")
        sha = str(sha_f.scalar()).lower() if sha_f.present else None
        if sha is not None and not _SHA256.match(sha):
            raise sha_f.fail(f"{sha!r} is not a sha256 (64 hex digits)")
        url = None
        if url_f.present:
            url = url_f.string()
            if not url.startswith(("https://", "http://")):
                raise url_f.fail(f"{url!r} is not an http(s) URL")
            if sha is None:
                raise entry.fail("a url needs its sha256, so a tampered download is refused")
        out[name] = BinarySource(name=name, path=path_f.path_value(base), url=url, sha256=sha)
    return out


def _versions(f: _Field) -> dict[str, str]:
    if not f.present:
        return {}
    if not isinstance(f.node, yaml.MappingNode):
        raise f.fail("expected a mapping of component to version, such as etcd: '3.4.30'")
    names = tuple(k.value for k, _ in f.node.value if isinstance(k, yaml.ScalarNode))
    out: dict[str, str] = {}
    for name, v in f.mapping(names).items():
        value = v.scalar()
        if not isinstance(value, str):
            raise v.fail(f"expected a quoted version string such as '1.32.3', got {_describe(value)}")
        out[name] = value
    return out


def _etcd(f: _Field) -> EtcdSettings:
    e = f.mapping(("data_dir", "heartbeat_ms", "election_ms")) if f.present else {}
    data_dir = f.get(e, "data_dir").string("/var/lib/etcd")
    if not data_dir.startswith("/"):
        raise f.get(e, "data_dir").fail(f"{data_dir!r} must be an absolute path on the node")
    heartbeat = f.get(e, "heartbeat_ms").integer(100, 10, 10000)
    election = f.get(e, "election_ms").integer(1000, 50, 50000)
    if election < 5 * heartbeat:
        raise f.get(e, "election_ms").fail(
            f"{election} is under 5x heartbeat_ms ({heartbeat}); etcd advises about 10x"
        )
    return EtcdSettings(data_dir=data_dir, heartbeat_ms=heartbeat, election_ms=election)

