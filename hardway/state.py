"""Where generated material lives on the jumpbox: ``pki/<cluster>/`` (0700).

One naming scheme shared by the PKI, kubeconfig, encryption and planning modules, so no module
guesses another's file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hardway import localfs
from hardway.inventory import Node


def kubelet_cert_name(node: Node | str) -> str:
    return f"kubelet-{getattr(node, 'name', node)}"


def etcd_cert_name(node: Node | str) -> str:
    return f"etcd-{getattr(node, 'name', node)}"


@dataclass(frozen=True)
class PkiState:
    """The PKI state directory of one cluster."""

    root: Path

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def public_key(self, name: str) -> Path:
        return self.root / f"{name}.pub"

    def kubeconfig(self, name: str) -> Path:
        return self.root / "kubeconfigs" / f"{name}.kubeconfig"

    @property
    def encryption_config(self) -> Path:
        return self.root / "encryption-config.yaml"

    def ensure_root(self) -> None:
        """Create the state dir 0700 (and tighten it if it exists looser)."""
        localfs.private_dir(self.root / "kubeconfigs")
        localfs.private_dir(self.root)
