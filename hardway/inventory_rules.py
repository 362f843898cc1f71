"""Rules on single inventory values, and the limits behind them, each with where it comes from.

Every ``*_problem`` function is pure: it returns what is wrong with a value and how to fix it, or
None; hardway/inventory.py adds the file, line and field. docs/inventory.md lists every rule.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from urllib.parse import urlsplit

from hardway.yamlfields import IPAddress, shown

# Where kube-apiserver listens (--secure-port) on every controller; a load balancer may use any port.
APISERVER_PORT = 6443
# X.509's upper bound for a CommonName (RFC 5280, ub-common-name); cryptography raises past it.
X509_CN_MAX = 64
KUBELET_CN_PREFIX = "system:node:"
# kube-apiserver refuses a service range with more than 20 host bits (IPv4 shorter than /12, IPv6
# shorter than /108): cmd/kube-apiserver/app/options/validation.go, validateClusterIPFlags,
# maxCIDRBits := 20 ("specified --service-cluster-ip-range is too large; for 32-bit addresses, the
# mask must be >= 12"); only lifted with the MultiCIDRServiceAllocator and DisableAllocatorDualWrite
# feature gates, which hardway does not set.
SERVICE_CIDR_MAX_HOST_BITS = 20
# The kubelet runs up to 110 pods (KubeletConfiguration maxPods, default 110; hardway keeps it).
# host-local IPAM takes neither the network address, the bridge's gateway (.1) nor broadcast, so a
# pod CIDR needs 110 + 3 addresses: a /25 (125 usable) for IPv4, a /121 for IPv6; a /26 has 61.
MAX_PODS = 110
POD_CIDR_MIN_ADDRESSES = 128
# kube-controller-manager's node CIDR allocator refuses an IPv6 node mask more than 16 bits longer
# than the cluster CIDR's (pkg/controller/nodeipam/ipam/cidrset/cidr_set.go, clusterSubnetMaxDiff).
IPV6_NODE_MASK_MAX_DIFF = 16

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL = re.compile(rf"^{_LABEL}$")
DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^v?[0-9]+(\.[0-9]+){0,3}([-+][0-9A-Za-z.+-]+)?$")
# systemd's strict user name rule (systemd.io/USER_NAMES): a letter or '_' first, then letters,
# digits, '_' or '-', at most 31 characters (utmp's UT_NAMESIZE minus its NUL).
USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,30}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9._@+-]+$")
# A data dir must be etcd's own directory on a disk that survives a reboot.
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
                          "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp",
                          "/usr", "/usr/local", "/var", "/var/cache", "/var/lib", "/var/log", "/var/spool",
                          "/var/tmp"})
_NOT_UNDER = {"/proc": "a virtual file system", "/sys": "a virtual file system", "/dev": "a virtual file system",
              "/run": "emptied at every boot", "/var/run": "emptied at every boot", "/tmp": "emptied at boot",
              "/var/tmp": "for temporary files", "/boot": "for the boot loader", "/etc": "for configuration",
              "/usr": "for installed software", "/bin": "for programs", "/sbin": "for programs",
              "/lib": "for libraries", "/lib32": "for libraries", "/lib64": "for libraries",
              "/libx32": "for libraries"}


def address_problem(address: IPAddress, *, alone: bool = False, san: bool = False,
                    written: str | None = None) -> str | None:
    """Why no peer could use ``address`` (``alone``: the only node, so loopback works; ``san``: a
    certificate entry, where loopback and link-local are fine; ``written``: the user's spelling)."""
    spelled = shown(written) if written is not None and written != str(address) else str(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return (f"{spelled} has a zone index (%{address.scope_id[:20]}), which certificates cannot "
                    "hold and URLs must escape; use a global or unique-local address")
        if address.ipv4_mapped is not None:
            return f"{spelled} is an IPv4 address written as IPv6; write it as {address.ipv4_mapped}"
        if address in ipaddress.IPv6Network("::/96") and int(address) > 1:
            return (f"{spelled} is a deprecated IPv4-compatible IPv6 address; write it as "
                    f"{ipaddress.IPv4Address(int(address))}")
    if address.is_unspecified:
        return f"{address} is the unspecified address, which no host can be reached at; use the host's own address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is the broadcast address; use one host's address"
    if address.is_multicast:
        return f"{address} is a multicast address; use one host's address"
    if san:
        return None
    if address.is_loopback and not alone:
        return (f"{address} is a loopback address, which other machines cannot reach; use an address on the "
                "nodes' network (loopback only suits a single-node cluster)")
    if address.version == 6 and address.is_link_local:
        return f"{address} is IPv6 link-local, usable only with a zone index; use a global or unique-local address"
    return None


def dns_name_problem(value: str, *, label_only: bool = False, wildcard: bool = False) -> str | None:
    """Why ``value`` is not an RFC 1123 DNS name (or label), or None."""
    if re.fullmatch(r"[0-9.]+", value) and not label_only:
        return (f"{shown(value)} looks like an IP address but is not one; write a whole address "
                "(e.g. 10.0.0.1) or a DNS name")
    name = value[2:] if wildcard and value.startswith("*.") else value
    limit = 63 if label_only else 253
    if len(value) > limit:
        return f"{shown(value)} is longer than {limit} characters, the most DNS allows"
    pattern = DNS_LABEL if label_only else DNS_SUBDOMAIN
    if pattern.match(name):
        return None
    kind = "an RFC 1123 label" if label_only else "an RFC 1123 DNS name"
    if pattern.match(name.lower()):
        return f"{shown(value)} is not {kind}: write it in lower case"
    if any(len(part) > 63 for part in name.split(".")):
        return f"{shown(value)} is not {kind}: a label between dots has at most 63 characters"
    return (f"{shown(value)} is not {kind} (lower-case letters, digits and '-', starting and ending with a "
            "letter or digit" + ("; '*.' only at the start" if wildcard else "") + ")")


def data_dir_problem(path: str) -> str | None:
    """Why ``path`` is no place for etcd's data on a node, or None."""
    if not path.startswith("/"):
        return f"{shown(path)} must be an absolute path on the node, such as /var/lib/etcd"
    if path != "/" and path.endswith("/"):
        return f"{shown(path)} ends in '/'; write {shown(path.rstrip('/') or '/')}"
    parts = path.split("/")[1:]
    if path != "/" and "" in parts:
        return f"{shown(path)} has an empty component ('//'); write {shown('/' + '/'.join(p for p in parts if p))}"
    if "." in parts or ".." in parts:
        return f"{shown(path)} contains '.' or '..'; write the path it means: {shown(posixpath.normpath(path))}"
    if path != "/" and not all(_PATH_PART.match(p) for p in parts):
        return (f"{shown(path)} has characters other than letters, digits and . _ @ + - (spaces, quotes and "
                "control characters break the unit and the shell commands that use it)")
    if len(path) > 4000 or any(len(p) > 255 for p in parts):
        return f"{shown(path)} is too long for a path (at most 255 characters a component)"
    if path in _SYSTEM_DIRS:
        return f"{path} is a system directory; give etcd a directory of its own, such as /var/lib/etcd"
    for top, why in _NOT_UNDER.items():
        if path.startswith(top + "/"):
            return f"{shown(path)} is under {top}, which is {why}; use a directory such as /var/lib/etcd"
    return None


def url_problem(url: str) -> str | None:
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return f"{shown(url)} contains spaces or control characters; percent-encode them"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return f"{shown(url)} is not a valid URL ({exc})"
    if parts.scheme not in ("https", "http"):
        return f"{shown(url)} is not an http(s) URL"
    if not parts.hostname:
        return f"{shown(url)} has no host; write it as https://HOST/PATH"
    return None
