"""The cluster PKI: one CA, the certificates of FIELD-NOTES' table, and why each is kept or reissued.

``catalogue(inv)`` says what every certificate must be; ``ensure_certificates`` makes the state
directory match it: an existing certificate that still fits is kept byte for byte (its file is not
touched), one that drifted is reissued (reusing its key when the key type still fits) with the
reasons printed, a missing one is issued. ``check`` reports the same reasons without writing.
Both use ``reasons_for``, so they always agree.

The CA is never replaced silently: a missing, broken, drifted or expiring CA is an error that names
``--rotate-ca``, because a new CA means every certificate on every node must be replaced.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.state import PkiState, etcd_cert_name, kubelet_cert_name

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_NAME = "ca"
SERVICE_ACCOUNTS = "service-accounts"
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind the jumpbox's
KEY_MODE = 0o600
CERT_MODE = 0o644


# --------------------------------------------------------------------------------------------
# What each certificate must be


@dataclass(frozen=True)
class CertSpec:
    """One certificate of the cluster: its file name (see hardway/state.py) and its content."""

    name: str
    common_name: str
    organization: str | None
    purpose: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()
    client: bool = False
    server: bool = False
    is_ca: bool = False

    @property
    def sans(self) -> tuple[tuple[str, str], ...]:
        """SANs as (kind, value) pairs, e.g. ("IP", "10.32.0.1")."""
        return tuple(("DNS", d) for d in self.dns_names) + tuple(("IP", str(i)) for i in self.ip_addresses)

    @property
    def eku(self) -> str:
        return _eku_label(self.client, self.server)


def _eku_label(client: bool, server: bool) -> str:
    return "+".join(p for p, on in (("client", client), ("server", server)) if on) or "none"


def _split_sans(entries: Iterable[str | IPAddress]) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """Split names and addresses, dropping duplicates but keeping the first order."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for entry in entries:
        try:
            ip = ipaddress.ip_address(str(entry))
        except ValueError:
            if str(entry) not in dns:
                dns.append(str(entry))
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(dns), tuple(ips)


def _leaf(name: str, cn: str, o: str | None, purpose: str, sans: Iterable[str | IPAddress] = (),
          client: bool = False, server: bool = False) -> CertSpec:
    dns, ips = _split_sans(sans)
    return CertSpec(name=name, common_name=cn, organization=o, purpose=purpose, dns_names=dns,
                    ip_addresses=ips, client=client, server=server)


def catalogue(inv: Inventory) -> list[CertSpec]:
    """Every certificate the cluster needs, CA first, named as in hardway/state.py."""
    loopback = ipaddress.ip_address("127.0.0.1")
    extra = inv.extra_sans
    specs = [CertSpec(name=CA_NAME, common_name=inv.cluster_name, organization=None, is_ca=True,
                      purpose="signs every other certificate; every component trusts it")]
    specs.append(_leaf("admin", "admin", "system:masters", client=True,
                       purpose="kubectl as cluster admin (group system:masters)"))
    for w in inv.workers:
        specs.append(_leaf(
            kubelet_cert_name(w), f"system:node:{w.name}", "system:nodes",
            sans=[w.name, w.address, loopback, *extra.get("kubelet", ())], client=True, server=True,
            purpose=f"kubelet on {w.name}: its identity to the apiserver (Node authorizer) and its "
                    "serving cert for the apiserver's logs/exec calls",
        ))
    specs.append(_leaf("kube-proxy", "system:kube-proxy", "system:node-proxier", client=True,
                       purpose="kube-proxy on every worker, talking to the apiserver"))
    for component in ("kube-controller-manager", "kube-scheduler"):
        specs.append(_leaf(component, f"system:{component}", f"system:{component}", client=True,
                           purpose=f"{component} on the controllers, talking to the apiserver"))
    api = inv.api_endpoint
    domain_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster", f"kubernetes.default.svc.{inv.cluster_domain}"]
    specs.append(_leaf(
        "kube-apiserver", "kubernetes", None, client=True, server=True,
        sans=[inv.service_ip, loopback, *(c.address for c in inv.controllers), api.address,
              *([api.hostname] if api.hostname else []), *domain_names,
              *extra.get("kube-apiserver", ())],
        purpose="the apiserver's serving cert (every address clients dial) and its etcd client cert",
    ))
    specs.append(_leaf("apiserver-kubelet-client", "kubernetes", None, client=True,
                       purpose="the apiserver calling kubelets (logs, exec); RBAC user `kubernetes`"))
    for c in inv.controllers:
        specs.append(_leaf(
            etcd_cert_name(c), c.name, None, client=True, server=True,
            sans=[c.address, loopback, c.name, "localhost", *extra.get("etcd", ())],
            purpose=f"etcd member {c.name}: serving clients and peers, and dialing its peers",
        ))
    specs.append(_leaf(SERVICE_ACCOUNTS, "service-accounts", None, client=True,
                       purpose="its key pair signs (apiserver) and verifies service-account tokens; "
                               "service-accounts.pub is the public half"))
    return specs


def spec_for(inv: Inventory, name: str) -> CertSpec:
    for spec in catalogue(inv):
        if spec.name == name:
            return spec
    raise HardwayError(f"no certificate named {name!r}; known: {', '.join(s.name for s in catalogue(inv))}")


# --------------------------------------------------------------------------------------------
# Keys


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise HardwayError(f"unsupported key algorithm {algorithm!r}; use ecdsa-p256 or rsa-2048/3072/4096")


def key_algorithm_of(key: object) -> str:
    """'ecdsa-p256', 'rsa-4096', ... for a private or public key."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ecdsa-p256" if key.curve.name == "secp256r1" else f"ecdsa-{key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def _public_der(key: PrivateKey | x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key or a certificate, to tell whether they pair."""
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_cert(path: Path) -> x509.Certificate | None:
    """The certificate at ``path``; None if the file is missing or not a whole PEM certificate.

    cryptography parses a certificate's key and extensions only when asked: they are asked for
    here, so a damaged one is caught now, not as a traceback in the middle of a drift check.
    """
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.public_key()
        _ = cert.extensions, cert.subject, cert.issuer, cert.signature_hash_algorithm
    except FileNotFoundError:
        return None
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return None
    return cert


def read_key(path: Path) -> PrivateKey | None:
    """The private key at ``path``; None if missing or unreadable. Never echoes the file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None


# --------------------------------------------------------------------------------------------
# Drift: why a certificate no longer fits


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


def _wanted_key_usages(spec: CertSpec, algorithm: str) -> frozenset[str]:
    if spec.is_ca:
        return frozenset({"digital_signature", "key_cert_sign", "crl_sign"})
    if algorithm.startswith("rsa-"):
        return frozenset({"digital_signature", "key_encipherment"})
    return frozenset({"digital_signature"})


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
    elif _public_der(key) != _public_der(cert):
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
        have_eku = _eku_label(ExtendedKeyUsageOID.CLIENT_AUTH in usages,
                              ExtendedKeyUsageOID.SERVER_AUTH in usages)
        if have_eku != spec.eku:
            reasons.append(f"EKU changed: {have_eku} → {spec.eku}")
    have_ku, want_ku = _key_usages(cert), _wanted_key_usages(spec, have_alg)
    if have_ku != want_ku:
        have_text, want_text = "+".join(sorted(have_ku)) or "none", "+".join(sorted(want_ku))
        reasons.append(f"key usage changed: {have_text} → {want_text}")
    if ca_cert is None:
        reasons.append("no CA to check the signature against")
    elif not _signed_by(cert, ca_cert):
        reasons.append("not self-signed" if spec.is_ca else "not signed by the current CA")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        reasons.append(f"expired {_day(not_after)}")
    elif not_after - now <= renew_within:
        reasons.append(f"expires {_day(not_after)} (within {renew_within.days} days)")
    if cert.not_valid_before_utc > now + BACKDATE:
        reasons.append(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (clock skew?)")
    return reasons


# --------------------------------------------------------------------------------------------
# Issuing


def issue(spec: CertSpec, key: PrivateKey, inv: Inventory, now: datetime,
          ca_cert: x509.Certificate | None = None, ca_key: PrivateKey | None = None) -> x509.Certificate:
    """Sign ``spec`` for ``key``: self-signed for the CA, else by ``ca_cert``/``ca_key``."""
    attrs = []
    if spec.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name))
    subject = x509.Name(attrs)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    not_before = now - BACKDATE
    if spec.is_ca:
        issuer, signer = subject, key
        not_after = now + timedelta(days=inv.ca_validity_days)
    else:
        if ca_cert is None or ca_key is None:
            raise ValueError(f"{spec.name}: a leaf certificate needs the CA cert and key")
        issuer, signer = ca_cert.subject, ca_key
        # A leaf must not outlive its CA: clients would reject it anyway.
        not_after = min(now + timedelta(days=inv.cert_validity_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=spec.is_ca, path_length=None), critical=True)
        .add_extension(ski, critical=False)
    )
    usages = _wanted_key_usages(spec, key_algorithm_of(key))
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature="digital_signature" in usages, content_commitment=False,
        key_encipherment="key_encipherment" in usages, data_encipherment=False, key_agreement=False,
        key_cert_sign="key_cert_sign" in usages, crl_sign="crl_sign" in usages,
        encipher_only=False, decipher_only=False), critical=True)
    if not spec.is_ca:
        assert ca_cert is not None
        ekus = ([ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else []) + \
               ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False)
        if spec.sans:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
            names += [x509.IPAddress(i) for i in spec.ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


# --------------------------------------------------------------------------------------------
# Files: written whole or not at all


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` via a temp file in the same dir and os.replace.

    The temp file is created with O_EXCL and ``mode`` from the start, so a key is never readable
    by others, not even for a moment; on any error it is removed and ``path`` is untouched.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fix_mode(path: Path, mode: int) -> str | None:
    """chmod ``path`` to ``mode`` if it differs (content untouched); say what changed."""
    have = path.stat().st_mode & 0o777
    if have == mode:
        return None
    os.chmod(path, mode)
    return f"mode {have:04o} → {mode:04o}"


# --------------------------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True)
class Outcome:
    """What a run did to one generated file: ``action`` is kept/issued/reissued or kept/written/rewritten."""

    kind: str
    name: str
    action: str
    reasons: tuple[str, ...] = ()


def format_outcomes(outcomes: Sequence[Outcome]) -> str:
    """An aligned report, one line per outcome (action, kind, name, reasons) plus a summary."""
    if not outcomes:
        return "nothing to do"
    rows = [(o.action, o.kind, o.name, "; ".join(o.reasons) or "-") for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {k:<{widths[1]}}  {n:<{widths[2]}}  {why}".rstrip() for a, k, n, why in rows]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    lines.append(", ".join(f"{n} {action}" for action, n in counts.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# ensure_certificates


@dataclass
class _Plan:
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


def _leaf_files(state: PkiState) -> list[Path]:
    if not state.root.is_dir():
        return []
    return sorted(p for p in state.root.iterdir()
                  if p.suffix in (".crt", ".key") and p.stem != CA_NAME and p.is_file())


ROTATE_HINT = ("pass --rotate-ca to issue a new CA (every certificate is then reissued and must be "
               "redistributed to every node)")


def _plan_ca(inv: Inventory, state: PkiState, now: datetime, renew_within: timedelta,
             rotate_ca: bool) -> _Plan:
    spec = catalogue(inv)[0]
    crt_path, key_path = state.cert(CA_NAME), state.key(CA_NAME)
    if rotate_ca:
        why = "rotated on request (--rotate-ca): every certificate is reissued and must be redistributed"
        return _Plan(spec, "reissued" if crt_path.exists() else "issued", (why,),
                     new_key(inv.key_algorithm), write_key=True)
    crt_exists, key_exists = crt_path.exists(), key_path.exists()
    if not crt_exists:
        leaves = _leaf_files(state)
        if leaves:
            raise HardwayError(
                f"{crt_path} is missing but {len(leaves)} certificate/key files signed by a CA exist in "
                f"{state.root} (e.g. {leaves[0].name}): restore ca.crt and ca.key from a backup, "
                f"or {ROTATE_HINT}"
            )
        key = read_key(key_path) if key_exists else None
        reuse = key is not None and key_algorithm_of(key) == inv.key_algorithm
        return _Plan(spec, "issued", ("missing",), key if reuse and key else new_key(inv.key_algorithm),
                     write_key=not reuse)
    cert = read_cert(crt_path)
    if cert is None:
        raise HardwayError(f"{crt_path} is not a PEM certificate: restore it from a backup, or {ROTATE_HINT}")
    if not key_exists:
        raise HardwayError(
            f"{crt_path} exists but its key {key_path} is missing, so no certificate can be signed: "
            f"restore ca.key from a backup, or {ROTATE_HINT}"
        )
    key = read_key(key_path)
    if key is None:
        raise HardwayError(f"{key_path} is not an unencrypted PEM ECDSA/RSA key: restore it from a backup, "
                           f"or {ROTATE_HINT}")
    if _public_der(key) != _public_der(cert):
        raise HardwayError(f"{key_path} does not belong to {crt_path} (public keys differ): restore the "
                           f"matching pair from a backup, or {ROTATE_HINT}")
    reasons = reasons_for(spec, cert, key, cert, inv, now, renew_within)
    if reasons:
        raise HardwayError(f"the CA {crt_path} no longer fits the inventory ({'; '.join(reasons)}); "
                           f"hardway never replaces a CA silently: {ROTATE_HINT}")
    return _Plan(spec, "kept", (), key, write_key=False, cert=cert)


def ensure_certificates(inv: Inventory, state: PkiState, *, now: datetime | None = None,
                        rotate_ca: bool = False, renew_within: timedelta | None = None,
                        only: Collection[str] | None = None) -> list[Outcome]:
    """Issue missing certificates, reissue drifted ones, keep the rest untouched (byte for byte).

    ``only`` limits the leaf certificates considered (the CA is always checked). Everything is
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

    ca = _plan_ca(inv, state, now, renew_within, rotate_ca)
    if ca.cert is None:
        ca.cert = issue(ca.spec, ca.key, inv, now)
    plans = [ca]
    for spec in specs[1:]:
        if only is not None and spec.name not in only:
            continue
        cert, key = read_cert(state.cert(spec.name)), read_key(state.key(spec.name))
        reasons = reasons_for(spec, cert, key, ca.cert, inv, now, renew_within)
        if cert is None and state.cert(spec.name).exists():
            reasons = ["certificate file is not PEM"]
        if not reasons:
            plans.append(_Plan(spec, "kept", (), key, write_key=False, cert=cert))  # type: ignore[arg-type]
            continue
        reuse = key is not None and key_algorithm_of(key) == inv.key_algorithm
        if not reuse:
            key = new_key(inv.key_algorithm)
        assert key is not None
        plans.append(_Plan(spec, "issued" if reasons == ["missing"] else "reissued", tuple(reasons), key,
                           write_key=not reuse, cert=issue(spec, key, inv, now, ca.cert, ca.key)))

    outcomes: list[Outcome] = []
    if rotate_ca and state.cert(CA_NAME).exists():
        _keep_previous_ca(state)
    for plan in plans:
        assert plan.cert is not None
        reasons = plan.reasons
        if plan.write_key:
            write_atomic(state.key(plan.spec.name), key_pem(plan.key), KEY_MODE)
        elif state.key(plan.spec.name).exists():
            fixed = fix_mode(state.key(plan.spec.name), KEY_MODE)
            reasons += (f"{plan.spec.name}.key {fixed}",) if fixed else ()
        if plan.action != "kept":
            write_atomic(state.cert(plan.spec.name), cert_pem(plan.cert), CERT_MODE)
        outcomes.append(Outcome("cert", plan.spec.name, plan.action, reasons))
        if plan.spec.name == SERVICE_ACCOUNTS:
            outcomes.append(_ensure_public_key(state, plan.key))
    return outcomes


def _keep_previous_ca(state: PkiState) -> None:
    """Before --rotate-ca overwrites the CA, keep the old pair as ca.prev.* (key 0600).

    Nodes still trust the old CA until they receive the new one, and a run interrupted between
    writing ca.key and ca.crt must be recoverable from something hardway itself kept.
    """
    for src, dst, mode in ((state.key(CA_NAME), state.key(f"{CA_NAME}.prev"), KEY_MODE),
                           (state.cert(CA_NAME), state.cert(f"{CA_NAME}.prev"), CERT_MODE)):
        if src.exists():
            write_atomic(dst, src.read_bytes(), mode)


def _ensure_public_key(state: PkiState, key: PrivateKey) -> Outcome:
    path, wanted = state.public_key(SERVICE_ACCOUNTS), public_key_pem(key)
    try:
        have: bytes | None = path.read_bytes()
    except FileNotFoundError:
        have = None
    if have == wanted:
        return Outcome("public-key", SERVICE_ACCOUNTS, "kept")
    write_atomic(path, wanted, CERT_MODE)
    if have is None:
        return Outcome("public-key", SERVICE_ACCOUNTS, "written", ("missing",))
    return Outcome("public-key", SERVICE_ACCOUNTS, "rewritten", ("does not match service-accounts.key",))


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


def check(inv: Inventory, state: PkiState, *, now: datetime | None = None,
          renew_within: timedelta | None = None) -> list[CertStatus]:
    """Every certificate's expiry and drift, read-only; the same reasons ensure_certificates acts on."""
    now = _now(now)
    renew_within = timedelta(days=inv.renew_within_days) if renew_within is None else renew_within
    ca_cert = read_cert(state.cert(CA_NAME))
    statuses = []
    for spec in catalogue(inv):
        path = state.cert(spec.name)
        cert, key = read_cert(path), read_key(state.key(spec.name))
        if cert is None:
            reason = "certificate file is not PEM" if path.exists() else "missing"
            statuses.append(CertStatus(spec.name, path, None, None, "-" if spec.is_ca else CA_NAME,
                                       (reason,)))
            continue
        reasons = reasons_for(spec, cert, key, cert if spec.is_ca else ca_cert, inv, now, renew_within)
        key_path = state.key(spec.name)
        if key_path.exists() and key_path.stat().st_mode & 0o777 != KEY_MODE:
            reasons.append(f"{key_path.name} mode {key_path.stat().st_mode & 0o777:04o} (want 0600)")
        if spec.name == SERVICE_ACCOUNTS and key is not None:
            pub = state.public_key(SERVICE_ACCOUNTS)
            if not pub.exists():
                reasons.append(f"{pub.name} missing")
            elif pub.read_bytes() != public_key_pem(key):
                reasons.append(f"{pub.name} does not match {spec.name}.key")
        expires = cert.not_valid_after_utc
        statuses.append(CertStatus(spec.name, path, expires, expires - now, "-" if spec.is_ca else CA_NAME,
                                   tuple(reasons)))
    return statuses


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
    header = ("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CA", "DRIFT")
    rows = [header] + [
        (s.name, f"{s.expires:%b %d, %Y %H:%M} UTC" if s.expires else "missing", _residual(s.residual),
         s.ca, "; ".join(s.reasons) or "-")
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "   ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(r[:4])) + "   " + r[4] for r in rows
    )


__all__ = [
    "CertSpec", "CertStatus", "Outcome", "catalogue", "check", "ensure_certificates",
    "format_check_table", "format_outcomes", "has_problems", "issue", "key_algorithm_of", "new_key",
    "reasons_for", "spec_for", "write_atomic",
]
