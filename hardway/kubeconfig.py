"""Kubeconfigs for the admin and every component, built from the certificates in the PKI state.

A kubeconfig's bytes follow from the certificates and the inventory alone, so a file is written
only when those bytes change, and the report says why (server moved, certificate reissued, ...).
They embed private keys: 0600, like the keys.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.x509.oid import NameOID

from hardway import localfs
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.paths import APISERVER_PORT
from hardway.pki import Generated, read_cert
from hardway.state import PkiState, kubelet_cert_name

LOCAL_APISERVER = f"https://127.0.0.1:{APISERVER_PORT}"


@dataclass(frozen=True)
class KubeconfigSpec:
    name: str
    cert: str
    server: str
    purpose: str


def kubeconfig_specs(inv: Inventory) -> list[KubeconfigSpec]:
    """Which kubeconfigs the cluster needs, the certificate each embeds and the server it dials."""
    remote = inv.api_endpoint.url
    specs = [
        KubeconfigSpec("admin", "admin", remote, "kubectl on the jumpbox, through the API endpoint"),
        KubeconfigSpec("admin-local", "admin", LOCAL_APISERVER, "kubectl on a controller"),
        KubeconfigSpec("kube-controller-manager", "kube-controller-manager", LOCAL_APISERVER,
                       "controller-manager on each controller"),
        KubeconfigSpec("kube-scheduler", "kube-scheduler", LOCAL_APISERVER, "scheduler on each controller"),
        KubeconfigSpec("kube-proxy", "kube-proxy", remote, "kube-proxy on every worker"),
    ]
    for w in inv.workers:
        name = kubelet_cert_name(w)
        specs.append(KubeconfigSpec(name, name, remote, f"kubelet on {w.name}"))
    return specs


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read(path: Path, spec: KubeconfigSpec) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise HardwayError(f"kubeconfig {spec.name} needs {path}, which is missing; run invoke pki") from None


def render(inv: Inventory, state: PkiState, spec: KubeconfigSpec) -> bytes:
    """The kubeconfig's bytes: deterministic for given certificates, key and inventory."""
    ca = _read(state.cert("ca"), spec)
    crt = _read(state.cert(spec.cert), spec)
    key = _read(state.key(spec.cert), spec)
    cert = read_cert(state.cert(spec.cert))
    if cert is None:
        raise HardwayError(f"{state.cert(spec.cert)} is not a PEM certificate; run invoke pki to reissue it")
    user = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": inv.cluster_name, "cluster": {
            "certificate-authority-data": _b64(ca), "server": spec.server}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(crt), "client-key-data": _b64(key)}}],
        "contexts": [{"name": "default", "context": {"cluster": inv.cluster_name, "user": user}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1 << 20).encode()


def drift(inv: Inventory, state: PkiState) -> dict[str, tuple[str, ...]]:
    """Kubeconfigs on the jumpbox that differ from what the inventory and certificates call for
    (e.g. a server URL still naming an old address), with the reasons; read-only."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in kubeconfig_specs(inv):
        path = state.kubeconfig(spec.name)
        try:
            want = render(inv, state, spec)
        except HardwayError as exc:
            out[spec.name] = (str(exc),)
            continue
        have = path.read_bytes() if path.exists() else None
        if have is None:
            out[spec.name] = ("missing",)
        elif have != want:
            out[spec.name] = _why_changed(have, want)
    return out


def _dig(doc: object, *path: str | int) -> object:
    """``doc[path[0]][path[1]]...``, or None where a level is missing or not a mapping/list."""
    for step in path:
        if isinstance(step, int) and isinstance(doc, list) and len(doc) > step:
            doc = doc[step]
        elif isinstance(step, str) and isinstance(doc, dict):
            doc = doc.get(step)
        else:
            return None
    return doc


def _why_changed(old: bytes, new: bytes) -> tuple[str, ...]:
    """What differs between two kubeconfigs, without ever echoing key material. ``old`` may be
    anything a hand edit left: not YAML, not a kubeconfig, nested past the recursion limit."""
    try:
        a = yaml.safe_load(old)
    except (yaml.YAMLError, RecursionError):
        return ("previous file unreadable",)
    b = yaml.safe_load(new)
    if not isinstance(_dig(a, "clusters", 0), dict) or not isinstance(_dig(a, "users", 0), dict):
        return ("previous file unreadable",)
    reasons = []
    for label, path in (("cluster name", ("clusters", 0, "name")), ("server", ("clusters", 0, "cluster", "server")),
                        ("user", ("users", 0, "name"))):
        have, want = _dig(a, *path), _dig(b, *path)
        if have != want:
            reasons.append(f"{label} {str(have)[:80]} → {want}")
    for label, path in (("CA changed", ("clusters", 0, "cluster", "certificate-authority-data")),
                        ("client certificate reissued", ("users", 0, "user", "client-certificate-data")),
                        ("client key changed", ("users", 0, "user", "client-key-data"))):
        if _dig(a, *path) != _dig(b, *path):
            reasons.append(label)
    return tuple(reasons) or ("content differs",)


def ensure_kubeconfigs(inv: Inventory, state: PkiState) -> list[Generated]:
    """Write every kubeconfig whose bytes differ from what the certificates call for; keep the rest."""
    state.ensure_root()
    rendered = [(spec, render(inv, state, spec)) for spec in kubeconfig_specs(inv)]  # all or nothing
    outcomes = []
    for spec, data in rendered:
        path = state.kubeconfig(spec.name)
        try:
            old: bytes | None = path.read_bytes()
        except FileNotFoundError:
            old = None
        if old == data:
            fixed = localfs.fix_mode(path, localfs.SECRET_MODE)
            outcomes.append(Generated("kubeconfig", spec.name, "kept", (fixed,) if fixed else ()))
            continue
        localfs.write_atomic(path, data, localfs.SECRET_MODE)
        if old is None:
            outcomes.append(Generated("kubeconfig", spec.name, "written", ("missing",)))
        else:
            outcomes.append(Generated("kubeconfig", spec.name, "rewritten", _why_changed(old, data)))
    return outcomes


def install_admin(inv: Inventory, state: PkiState, target: Path, *, force: bool = False) -> str:
    """Copy the admin kubeconfig (server: the API endpoint) to ``target`` (0600) for kubectl on the
    jumpbox. A different file already there is refused unless ``force``, which keeps it as
    ``<target>.hardway-orig-<time>``. Says what it did."""
    spec = next(s for s in kubeconfig_specs(inv) if s.name == "admin")
    data = render(inv, state, spec)
    have = localfs.read_or_none(target)
    if have == data:
        localfs.fix_mode(target, localfs.SECRET_MODE)
        return f"{target}: already the admin kubeconfig for {spec.server} (kept)"
    if have is not None:
        if not force:
            raise HardwayError(f"{target} exists and is another kubeconfig; pass --force to replace it (kept as "
                               f"{target}.hardway-orig-<time>), or --out PATH to write elsewhere")
        localfs.write_atomic(target.with_name(f"{target.name}.hardway-orig-{int(time.time())}"), have,
                             localfs.SECRET_MODE)
    if not target.parent.is_dir():  # ~/.kube on a fresh machine; an existing directory is left as it is
        localfs.private_dir(target.parent)
    localfs.write_atomic(target, data, localfs.SECRET_MODE)
    return f"{target}: the admin kubeconfig for {spec.server} (0600)"
