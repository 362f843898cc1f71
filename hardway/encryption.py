"""The apiserver's EncryptionConfiguration: Secrets encrypted at rest in etcd.

Written once. Its key decrypts every Secret the cluster ever stored, so an existing file is never
regenerated: a new key would make every stored Secret unreadable. A file we cannot read, or one
for another provider, is an error the user resolves by hand; hardway does not overwrite it.
The key is never printed, logged or put into an error message.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

import yaml

from hardway import localfs
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.pki import Generated
from hardway.state import PkiState

API_VERSION = "apiserver.config.k8s.io/v1"
KEY_BYTES = 32
_NAME = "encryption-config"


def render(provider: str, secret: bytes) -> bytes:
    """The EncryptionConfiguration for Secrets: ``provider`` with one key first, identity last."""
    config = {
        "apiVersion": API_VERSION,
        "kind": "EncryptionConfiguration",
        "resources": [{
            "resources": ["secrets"],
            "providers": [
                {provider: {"keys": [{"name": "key1", "secret": base64.b64encode(secret).decode("ascii")}]}},
                {"identity": {}},
            ],
        }],
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False).encode()


def _refuse(path: object, problem: str, fix: str) -> HardwayError:
    return HardwayError(
        f"{path}: {problem}; hardway will not overwrite it, because a new key would make every Secret "
        f"stored with the old one unreadable: {fix}"
    )


def _validate(inv: Inventory, state: PkiState, data: bytes) -> None:
    """Raise (without echoing the file: it holds the key) unless ``data`` is a config we would write."""
    path = state.encryption_config
    restore = ("restore it from a backup, or, only for a cluster that has never stored a Secret, "
               "delete it and run invoke pki")
    try:
        doc: Any = yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:  # its str() quotes the line, which may hold the key
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise _refuse(path, f"is not valid YAML (line {line}: {exc.problem})", restore) from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise _refuse(path, "is not valid YAML", restore) from None
    try:
        if doc["apiVersion"] != API_VERSION or doc["kind"] != "EncryptionConfiguration":
            raise _refuse(path, f"is not an EncryptionConfiguration ({API_VERSION})", restore)
        entry = next(r for r in doc["resources"] if "secrets" in r["resources"])
        first = entry["providers"][0]
        provider = next(iter(first))
        keys = first[provider]["keys"] if provider != "identity" else []
    except (KeyError, IndexError, TypeError, StopIteration):
        raise _refuse(path, "does not have resources[secrets].providers with keys", restore) from None
    if provider != inv.encryption_provider:
        raise _refuse(
            path, f"encrypts Secrets with {provider!r}, the inventory asks for {inv.encryption_provider!r}",
            f"set encryption.provider: {provider} in {inv.path}, or migrate by hand (add the new provider "
            "first, restart the apiservers, rewrite all Secrets, then drop the old one)",
        )
    try:
        for k in keys:
            if len(base64.b64decode(k["secret"], validate=True)) not in (16, 24, 32):
                raise _refuse(path, f"key {k.get('name')!r} is not 16, 24 or 32 bytes", restore)
    except (KeyError, TypeError, binascii.Error):
        raise _refuse(path, "has a key whose secret is not base64", restore) from None
    if not keys:
        raise _refuse(path, f"lists no keys for {provider!r}", restore)


def ensure_encryption_config(inv: Inventory, state: PkiState) -> Generated:
    """Write the encryption config once (0600); afterwards only check it, never regenerate it."""
    path = state.encryption_config
    state.ensure_root()
    try:
        data: bytes | None = path.read_bytes()
    except FileNotFoundError:
        data = None
    if data is not None:
        _validate(inv, state, data)
        fixed = localfs.fix_mode(path, localfs.SECRET_MODE)
        return Generated("encryption-config", _NAME, "kept", (fixed,) if fixed else ())
    localfs.write_atomic(path, render(inv.encryption_provider, secrets.token_bytes(KEY_BYTES)), localfs.SECRET_MODE)
    return Generated("encryption-config", _NAME, "written", (f"new {inv.encryption_provider} key",))


def problem(inv: Inventory, state: PkiState) -> str | None:
    """Why the jumpbox's encryption config is not the one hardway would use (missing, unreadable, another
    provider, readable by others), or None. Never quotes the file: it holds the key."""
    path = state.encryption_config
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path} missing: run `invoke pki`"
    try:
        _validate(inv, state, data)
    except HardwayError as exc:
        return str(exc)
    mode = path.stat().st_mode & 0o777
    return f"{path} is {mode:04o}, want 0600: chmod 600 {path}" if mode & 0o077 else None
