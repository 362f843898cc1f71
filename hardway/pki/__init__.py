"""The cluster PKI: two CAs, the certificates of FIELD-NOTES' table, and why each is kept or reissued.

``catalogue(inv)`` says what every certificate must be and which CA signs it (the cluster CA signs
every Kubernetes identity, the etcd CA signs etcd's members and the apiserver's etcd client);
``ensure_certificates`` makes the state directory match it: an existing certificate that still fits
is kept byte for byte (its file is not touched), one that drifted is reissued (reusing its key when
the key type still fits) with the reasons printed, a missing one is issued. ``check`` reports
without writing. Both read the same ``assess``ment, so they always agree.

A CA is never replaced silently: a missing, broken, drifted or expiring CA is an error that names
``--rotate-ca``, because a new CA means every certificate it signed must be replaced on every node.
The one exception is a CA no certificate was signed by yet (the etcd CA of a cluster made before it
existed): it is issued, and the certificates it now signs are reissued (``invoke rotate-certs`` then
moves etcd over without downtime).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from hardway import localfs
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.pki.assess import CERT_MODE, KEY_MODE, Assessment, assess, reasons_for
from hardway.pki.catalogue import (
    APISERVER_ETCD_CLIENT,
    CA_NAME,
    CA_NAMES,
    ETCD_CA_NAME,
    SERVICE_ACCOUNTS,
    CertSpec,
    cas,
    catalogue,
    spec_for,
)
from hardway.pki.keys import (
    PrivateKey,
    cert_pem,
    issue,
    key_algorithm_of,
    key_pem,
    new_key,
    public_der,
    public_key_pem,
    read_cert,
    read_key,
)
from hardway.state import PkiState
from hardway.table import format_table

__all__ = [
    "APISERVER_ETCD_CLIENT", "CA_NAME", "CA_NAMES", "CERT_MODE", "ETCD_CA_NAME", "KEY_MODE", "SERVICE_ACCOUNTS",
    "CertSpec", "CertStatus", "Generated", "cas", "catalogue", "cert_pem", "check", "ensure_certificates",
    "format_check_table", "format_outcomes", "has_problems", "issue", "key_algorithm_of", "key_pem", "new_key",
    "public_key_pem", "read_cert", "read_key", "reasons_for", "spec_for",
]


@dataclass(frozen=True)
class Generated:
    """What a run did to one generated file: ``action`` is kept/issued/reissued or kept/written/rewritten."""

    kind: str
    name: str
    action: str
    reasons: tuple[str, ...] = ()


def format_outcomes(outcomes: Sequence[Generated]) -> str:
    """An aligned report, one line per file (action, kind, name, reasons) plus a summary."""
    if not outcomes:
        return "nothing to do"
    rows = [(o.action, o.kind, o.name, "; ".join(o.reasons) or "-") for o in outcomes]
    table = format_table(("ACTION", "KIND", "NAME", "WHY"), rows).split("\n", 1)[1]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    return table + "\n" + ", ".join(f"{n} {action}" for action, n in counts.items())


# --------------------------------------------------------------------------------------------
# ensure_certificates


@dataclass
class _Decision:
    spec: CertSpec
    action: str
    reasons: tuple[str, ...]
    key: PrivateKey
    write_key: bool
    cert: x509.Certificate | None = None


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(UTC)


def _signed_leaves(state: PkiState, ca: CertSpec, specs: Sequence[CertSpec]) -> list[Path]:
    """Certificates in the state dir that ``ca`` signed (by issuer name), or that cannot be read.

    A certificate of another CA does not count: the etcd member certificates of a cluster made
    before it had an etcd CA were signed by the cluster CA, and do not stop the etcd CA's issue."""
    name = x509.Name(([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.organization)] if ca.organization else [])
                     + [x509.NameAttribute(NameOID.COMMON_NAME, ca.common_name)])
    found = []
    for spec in specs:
        path = state.cert(spec.name)
        if spec.is_ca or spec.issuer != ca.name or not path.exists():
            continue
        cert = read_cert(path)
        if cert is None or cert.issuer == name:
            found.append(path)
    return found


ROTATE_HINT = ("pass --rotate-ca to issue new CAs (every certificate is then reissued and must be "
               "redistributed to every node)")


def _decide_ca(inv: Inventory, state: PkiState, spec: CertSpec, specs: Sequence[CertSpec], now: datetime,
               renew_within: timedelta, rotate_ca: bool) -> _Decision:
    name = spec.name
    crt_path, key_path = state.cert(name), state.key(name)
    if rotate_ca:
        why = "rotated on request (--rotate-ca): every certificate is reissued and must be redistributed"
        return _Decision(spec, "reissued" if crt_path.exists() else "issued", (why,),
                         new_key(inv.key_algorithm), write_key=True)
    if not crt_path.exists():
        leaves = _signed_leaves(state, spec, specs)
        if leaves:
            raise HardwayError(
                f"{crt_path} is missing but {len(leaves)} certificate(s) signed by it exist in "
                f"{state.root} (e.g. {leaves[0].name}): restore {name}.crt and {name}.key from a backup, "
                f"or {ROTATE_HINT}"
            )
        key = read_key(key_path) if key_path.exists() else None
        reuse = key is not None and key_algorithm_of(key) == inv.key_algorithm
        return _Decision(spec, "issued", ("missing",), key if reuse and key else new_key(inv.key_algorithm),
                         write_key=not reuse)
    cert = read_cert(crt_path)
    if cert is None:
        raise HardwayError(f"{crt_path} is not a PEM certificate: restore it from a backup, or {ROTATE_HINT}")
    if not key_path.exists():
        raise HardwayError(
            f"{crt_path} exists but its key {key_path} is missing, so no certificate can be signed: "
            f"restore {name}.key from a backup, or {ROTATE_HINT}"
        )
    key = read_key(key_path)
    if key is None:
        raise HardwayError(f"{key_path} is not an unencrypted PEM ECDSA/RSA key: restore it from a backup, "
                           f"or {ROTATE_HINT}")
    if public_der(key) != public_der(cert):
        raise HardwayError(f"{key_path} does not belong to {crt_path} (public keys differ): restore the "
                           f"matching pair from a backup, or {ROTATE_HINT}")
    reasons = reasons_for(spec, cert, key, cert, inv, now, renew_within)
    if reasons:
        raise HardwayError(f"the CA {crt_path} no longer fits the inventory ({'; '.join(reasons)}); "
                           f"hardway never replaces a CA silently: {ROTATE_HINT}")
    return _Decision(spec, "kept", (), key, write_key=False, cert=cert)


def ensure_certificates(inv: Inventory, state: PkiState, *, now: datetime | None = None,
                        rotate_ca: bool = False, renew_within: timedelta | None = None,
                        only: Collection[str] | None = None) -> list[Generated]:
    """Issue missing certificates, reissue drifted ones, keep the rest untouched (byte for byte).

    ``only`` limits the leaf certificates considered (the cluster CA is always checked, another CA
    when one of them is its). Everything is
    decided and signed in memory first; files are written only once nothing can fail but I/O.
    """
    now = _now(now)
    renew_within = timedelta(days=inv.renew_within_days) if renew_within is None else renew_within
    specs = catalogue(inv)
    if only is not None:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise HardwayError(f"unknown certificate(s) {', '.join(unknown)}; known: "
                               f"{', '.join(s.name for s in specs)}")
        if rotate_ca and set(only) != {s.name for s in specs}:
            raise HardwayError("--rotate-ca reissues every certificate; it cannot be limited to some of them")
    state.ensure_root()

    # The cluster CA is always checked; another CA when a certificate it signs is considered.
    wanted_cas = {CA_NAME} | {s.issuer for s in specs if only is None or s.name in only}
    authorities: dict[str, _Decision] = {}
    for spec in cas(specs):
        if spec.name not in wanted_cas:
            continue
        ca = _decide_ca(inv, state, spec, specs, now, renew_within, rotate_ca)
        if ca.cert is None:
            ca.cert = issue(ca.spec, ca.key, inv, now)
        authorities[spec.name] = ca
    decisions = list(authorities.values())
    for spec in specs:
        if spec.is_ca or (only is not None and spec.name not in only):
            continue
        ca = authorities[spec.issuer]
        a = assess(spec, state, ca.cert, inv, now, renew_within)
        if not a.reasons:
            assert a.cert is not None and a.key is not None
            decisions.append(_Decision(spec, "kept", (), a.key, write_key=False, cert=a.cert))
            continue
        reuse = a.key is not None and key_algorithm_of(a.key) == inv.key_algorithm
        key = a.key if reuse and a.key is not None else new_key(inv.key_algorithm)
        decisions.append(_Decision(spec, "issued" if a.reasons == ("missing",) else "reissued", a.reasons, key,
                                   write_key=not reuse, cert=issue(spec, key, inv, now, ca.cert, ca.key)))

    outcomes: list[Generated] = []
    if rotate_ca:
        for name in authorities:
            if state.cert(name).exists():
                _keep_previous_ca(state, name)
    for d in decisions:
        assert d.cert is not None
        reasons = d.reasons
        if d.write_key:
            localfs.write_atomic(state.key(d.spec.name), key_pem(d.key), KEY_MODE)
        elif state.key(d.spec.name).exists():
            fixed = localfs.fix_mode(state.key(d.spec.name), KEY_MODE)
            reasons += (f"{d.spec.name}.key {fixed}",) if fixed else ()
        if d.action != "kept":
            localfs.write_atomic(state.cert(d.spec.name), cert_pem(d.cert), CERT_MODE)
        outcomes.append(Generated("cert", d.spec.name, d.action, reasons))
        if d.spec.name == SERVICE_ACCOUNTS:
            outcomes.append(_ensure_public_key(state, d.key))
    return outcomes


def _keep_previous_ca(state: PkiState, name: str) -> None:
    """Before --rotate-ca overwrites a CA, keep the old pair as <name>.prev.* (key 0600).

    Nodes still trust the old CA until they receive the new one, and a run interrupted between
    writing ca.key and ca.crt must be recoverable from something hardway itself kept.
    """
    for src, dst, mode in ((state.key(name), state.key(f"{name}.prev"), KEY_MODE),
                           (state.cert(name), state.cert(f"{name}.prev"), CERT_MODE)):
        if src.exists():
            localfs.write_atomic(dst, src.read_bytes(), mode)


def _ensure_public_key(state: PkiState, key: PrivateKey) -> Generated:
    change = localfs.ensure_file(state.public_key(SERVICE_ACCOUNTS), public_key_pem(key), CERT_MODE)
    if change is localfs.Change.WRITTEN:
        return Generated("public-key", SERVICE_ACCOUNTS, "written", ("missing",))
    if change is localfs.Change.REWRITTEN:
        return Generated("public-key", SERVICE_ACCOUNTS, "rewritten", ("does not match service-accounts.key",))
    return Generated("public-key", SERVICE_ACCOUNTS, "kept")


# --------------------------------------------------------------------------------------------
# check: the expiry and drift table


@dataclass(frozen=True)
class CertStatus:
    name: str
    path: Path
    expires: datetime | None
    residual: timedelta | None
    ca: str
    reasons: tuple[str, ...]

    @property
    def missing(self) -> bool:
        return self.expires is None

    @property
    def ok(self) -> bool:
        return not self.reasons


def _status(a: Assessment, state: PkiState, now: datetime) -> CertStatus:
    expires = a.cert.not_valid_after_utc if a.cert is not None else None
    return CertStatus(a.spec.name, state.cert(a.spec.name), expires, expires - now if expires else None,
                      "-" if a.spec.is_ca else a.spec.issuer, a.problems)


def check(inv: Inventory, state: PkiState, *, now: datetime | None = None,
          renew_within: timedelta | None = None) -> list[CertStatus]:
    """Every certificate's expiry and drift (each CA a row of its own), read-only: the assessment
    ensure_certificates acts on."""
    now = _now(now)
    renew_within = timedelta(days=inv.renew_within_days) if renew_within is None else renew_within
    specs = catalogue(inv)
    ca_certs = {spec.name: read_cert(state.cert(spec.name)) for spec in cas(specs)}
    return [_status(assess(spec, state, ca_certs[spec.issuer], inv, now, renew_within), state, now)
            for spec in specs]


def has_problems(statuses: Sequence[CertStatus]) -> bool:
    """True if any certificate is missing, drifted or expires within the renewal window."""
    return any(s.reasons for s in statuses)


def _residual(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    if delta <= timedelta(0):
        return "expired"
    if delta >= timedelta(days=1):
        return f"{delta.days}d"
    return f"{int(delta.total_seconds() // 3600)}h"


def format_check_table(statuses: Sequence[CertStatus]) -> str:
    """Like ``kubeadm certs check-expiration``: CERTIFICATE, EXPIRES, RESIDUAL TIME, CA, DRIFT."""
    rows = [(s.name, f"{s.expires:%b %d, %Y %H:%M} UTC" if s.expires else "missing", _residual(s.residual),
             s.ca, "; ".join(s.reasons) or "-") for s in statuses]
    return format_table(("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CA", "DRIFT"), rows, gap="   ")
