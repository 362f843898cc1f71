"""Everything the jumpbox makes, in order: certificates, then the kubeconfigs that embed them, then
the encryption config. Each step keeps what still fits, so running it again is safe."""

from __future__ import annotations

from datetime import timedelta

from hardway import encryption, kubeconfig, pki
from hardway.inventory import Inventory
from hardway.pki import Generated
from hardway.state import PkiState


def generate(inv: Inventory, state: PkiState, *, rotate_ca: bool = False,
             renew_within: timedelta | None = None) -> list[Generated]:
    outcomes = pki.ensure_certificates(inv, state, rotate_ca=rotate_ca, renew_within=renew_within)
    outcomes += kubeconfig.ensure_kubeconfigs(inv, state)
    outcomes.append(encryption.ensure_encryption_config(inv, state))
    return outcomes
