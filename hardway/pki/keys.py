"""Keys and certificates as bytes: generate, serialize, read back (never echoing a key), sign."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.pki.catalogue import CertSpec

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind the jumpbox's


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


def public_der(key: PrivateKey | x509.Certificate) -> bytes:
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


def wanted_key_usages(spec: CertSpec, algorithm: str) -> frozenset[str]:
    if spec.is_ca:
        return frozenset({"digital_signature", "key_cert_sign", "crl_sign"})
    if algorithm.startswith("rsa-"):
        return frozenset({"digital_signature", "key_encipherment"})
    return frozenset({"digital_signature"})


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
    usages = wanted_key_usages(spec, key_algorithm_of(key))
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
