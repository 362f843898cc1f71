"""Chapter pki: the CA, certificates, kubeconfigs and encryption config on the jumpbox (`invoke pki`).

It writes nothing to nodes (the chapters that use its files push them); its checks read only the
PKI state directory.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway import kubeconfig, localfs, pki
from hardway.chapters.base import Chapter, Context
from hardway.checks import FAIL, OK, Check, CheckResult
from hardway.inventory import Inventory
from hardway.state import PkiState

NAME = "pki"


def results(inv: Inventory, state: PkiState) -> list[CheckResult]:
    out = []
    for s in pki.check(inv, state):
        if s.ok:
            days = s.residual.days if s.residual else 0
            out.append(CheckResult(NAME, "certificate", s.name, OK, f"valid, {days}d left"))
        else:
            out.append(CheckResult(NAME, "certificate", s.name, FAIL, "; ".join(s.reasons),
                              "run `invoke pki` to issue/reissue it, then push it (`invoke rotate-certs`)"))
    stale = kubeconfig.drift(inv, state)
    for spec in kubeconfig.kubeconfig_specs(inv):
        if spec.name in stale:
            out.append(CheckResult(NAME, "kubeconfig", spec.name, FAIL, "; ".join(stale[spec.name]),
                              "run `invoke rotate-certs` (or `invoke pki`) to rewrite and push it"))
        else:
            out.append(CheckResult(NAME, "kubeconfig", spec.name, OK, f"server {spec.server}, current certificates"))
    # kubeconfigs embed client keys; the encryption config holds the key to every Secret
    secrets = [state.kubeconfig(s.name) for s in kubeconfig.kubeconfig_specs(inv)] + [state.encryption_config]
    loose = [p for p in secrets if p.exists() and p.stat().st_mode & 0o077]
    for p in loose:
        out.append(CheckResult(NAME, "secret-mode", p.name, FAIL, f"{p} is {p.stat().st_mode & 0o777:04o}, want 0600",
                          f"chmod 600 {p} (`invoke pki` does it too)"))
    if not loose:
        out.append(CheckResult(NAME, "secret-mode", "-", OK,
                          f"{len(secrets) - 1} kubeconfigs and the encryption config are 0600"))
    return out


class PkiChapter(Chapter):
    name = NAME
    title = "Certificate authority, TLS certificates, kubeconfigs and the encryption config"
    summary = ("Every component proves who it is with a certificate signed by the cluster's CA, and finds the "
               "apiserver through a kubeconfig. The encryption config holds the key that encrypts Secrets in "
               "etcd. All of it is made on the jumpbox; the node chapters push each node only what it needs.")
    task = "pki"

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(NAME, "certificates", "every certificate present, valid and matching the inventory",
                      lambda: results(ctx.inv, ctx.state))]


CHAPTER = PkiChapter()


def throwaway_client(directory: Path, algorithm: str) -> tuple[Path, Path]:
    """A client certificate signed by a fresh, unrelated CA: what a cluster must refuse."""
    now = datetime.now(UTC)
    ca_key, key = pki.new_key(algorithm), pki.new_key(algorithm)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hardway-foreign-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hardway-foreign-client")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "foreign-client.crt", directory / "foreign-client.key"
    localfs.write_atomic(key_path, pki.key_pem(key), localfs.SECRET_MODE)
    localfs.write_atomic(cert_path, pki.cert_pem(cert), 0o644)
    return cert_path, key_path
