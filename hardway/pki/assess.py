"""Why a certificate no longer fits: the one assessment ``pki.check`` reports and ``pki`` acts on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway.inventory import Inventory
from hardway.pki.catalogue import CA_NAME, SERVICE_ACCOUNTS, CertSpec, eku_label
from hardway.pki.keys import (
    BACKDATE,
    PrivateKey,
    key_algorithm_of,
    public_der,
    public_key_pem,
    read_cert,
    read_key,
    wanted_key_usages,
)
from hardway.state import PkiState

KEY_MODE = 0o600
CERT_MODE = 0o644


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]
    return ", ".join(values) if values else None


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _cert_sans(cert: x509.Certificate) -> list[tuple[str, str]]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return []
    return ([("DNS", d) for d in san.get_values_for_type(x509.DNSName)]
            + [("IP", str(i)) for i in san.get_values_for_type(x509.IPAddress)])


def _key_usages(cert: x509.Certificate) -> frozenset[str]:
    ku = _ext(cert, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage):
        return frozenset()
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign"]
    return frozenset(n for n in names if getattr(ku, n))


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issuer_label(issuer: str) -> str:
    """How reports name a CA: "CA" for the cluster's, "etcd CA" for etcd's ("etcd-ca" -> "etcd CA")."""
    return "CA" if issuer == CA_NAME else issuer.removesuffix("-ca") + " CA"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def reasons_for(spec: CertSpec, cert: x509.Certificate | None, key: PrivateKey | None,
                ca_cert: x509.Certificate | None, inv: Inventory, now: datetime,
                renew_within: timedelta) -> list[str]:
    """Why ``cert`` (with ``key``) no longer fits ``spec``; empty when it can be kept as it is.

    ``ca_cert`` is the current CA (for the CA itself, pass the CA cert: it must be self-signed).
    """
    if cert is None:
        return ["missing"]
    reasons: list[str] = []
    if key is None:
        reasons.append("key missing or unreadable")
    elif public_der(key) != public_der(cert):
        reasons.append("key does not match the certificate")
    have_alg, want_alg = key_algorithm_of(cert.public_key()), inv.key_algorithm
    if have_alg != want_alg:
        reasons.append(f"key type {have_alg} → {want_alg}")
    for label, oid, want in (("CN", NameOID.COMMON_NAME, spec.common_name),
                             ("O", NameOID.ORGANIZATION_NAME, spec.organization)):
        have = _attr(cert, oid)
        if have != want:
            reasons.append(f"subject {label} changed: {have or '(none)'} → {want or '(none)'}")
    have_sans = _cert_sans(cert)
    want_sans = list(spec.sans)
    reasons += [f"SAN added: {kind} {value}" for kind, value in want_sans if (kind, value) not in have_sans]
    reasons += [f"SAN removed: {kind} {value}" for kind, value in have_sans if (kind, value) not in want_sans]
    bc = _ext(cert, x509.BasicConstraints)
    have_ca = isinstance(bc, x509.BasicConstraints) and bc.ca
    if have_ca != spec.is_ca:
        reasons.append(f"CA flag {str(have_ca).upper()} → {str(spec.is_ca).upper()}")
    if not spec.is_ca:
        eku = _ext(cert, x509.ExtendedKeyUsage)
        usages = list(eku) if isinstance(eku, x509.ExtendedKeyUsage) else []
        have_eku = eku_label(ExtendedKeyUsageOID.CLIENT_AUTH in usages,
                              ExtendedKeyUsageOID.SERVER_AUTH in usages)
        if have_eku != spec.eku:
            reasons.append(f"EKU changed: {have_eku} → {spec.eku}")
    have_ku, want_ku = _key_usages(cert), wanted_key_usages(spec, have_alg)
    if have_ku != want_ku:
        have_text, want_text = "+".join(sorted(have_ku)) or "none", "+".join(sorted(want_ku))
        reasons.append(f"key usage changed: {have_text} → {want_text}")
    if ca_cert is None:
        reasons.append("no CA to check the signature against")
    elif not _signed_by(cert, ca_cert):
        reasons.append("not self-signed" if spec.is_ca else f"not signed by the current {issuer_label(spec.issuer)}")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        reasons.append(f"expired {_day(not_after)}")
    elif not_after - now <= renew_within:
        reasons.append(f"expires {_day(not_after)} (within {renew_within.days} days)")
    if cert.not_valid_before_utc > now + BACKDATE:
        reasons.append(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (clock skew?)")
    return reasons


@dataclass(frozen=True)
class Assessment:
    """One certificate as it is in the state dir: why it must be reissued (``reasons``) and what
    only needs a repair of its files (``repairs``: a loose key mode, a stale public key)."""

    spec: CertSpec
    cert: x509.Certificate | None
    key: PrivateKey | None
    reasons: tuple[str, ...]
    repairs: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        return self.reasons + self.repairs


def assess(spec: CertSpec, state: PkiState, ca_cert: x509.Certificate | None, inv: Inventory, now: datetime,
           renew_within: timedelta) -> Assessment:
    """Read ``spec``'s files and judge them; ``pki.check`` reports this and ``pki`` acts on it."""
    path, key_path = state.cert(spec.name), state.key(spec.name)
    cert, key = read_cert(path), read_key(key_path)
    if cert is None:
        return Assessment(spec, None, key, ("certificate file is not PEM",) if path.exists() else ("missing",))
    reasons = reasons_for(spec, cert, key, cert if spec.is_ca else ca_cert, inv, now, renew_within)
    repairs = []
    if key_path.exists() and key_path.stat().st_mode & 0o777 != KEY_MODE:
        repairs.append(f"{key_path.name} mode {key_path.stat().st_mode & 0o777:04o} (want 0600)")
    if spec.name == SERVICE_ACCOUNTS and key is not None:
        pub = state.public_key(SERVICE_ACCOUNTS)
        if not pub.exists():
            repairs.append(f"{pub.name} missing")
        elif pub.read_bytes() != public_key_pem(key):
            repairs.append(f"{pub.name} does not match {spec.name}.key")
    return Assessment(spec, cert, key, tuple(reasons), tuple(repairs))
