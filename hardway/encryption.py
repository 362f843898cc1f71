"""The apiserver's EncryptionConfiguration: Secrets encrypted at rest in etcd.

Written once. Its key decrypts every Secret the cluster ever stored, so an existing file is never
regenerated: a new key would make every stored Secret unreadable. A file we cannot read is an error
the user resolves by hand; hardway does not overwrite it. A new key, or another provider, goes through
``invoke rotate-encryption-key`` (hardway.encryption_rotation), which changes this file step by step.
New clusters get secretbox; aescbc (the tutorial's) and aesgcm stay selectable in the inventory.
The keys are never printed, logged or put into an error message.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from hardway import localfs
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.pki import Generated
from hardway.state import PkiState

API_VERSION = "apiserver.config.k8s.io/v1"
KEY_BYTES = 32
# secretbox (XSalsa20-Poly1305) first: upstream's encryption page rates aescbc weak (padding oracles)
# and aesgcm safe only with automatic key rotation; secretbox takes 32-byte keys only.
KEY_SIZES = {"secretbox": (32,), "aesgcm": (16, 24, 32), "aescbc": (16, 24, 32)}
_NAME = "encryption-config"
ROTATION_STATE = "encryption-rotation.yaml"  # in the PKI dir while a key rotation runs (encryption_rotation)


@dataclass(frozen=True)
class Key:
    """One key of the config. ``secret`` (base64) is never shown: not in a repr, a log or an error."""

    provider: str
    name: str
    secret: str = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def prefix(self) -> bytes:
        """How etcd values this key encrypted begin (the apiserver's envelope)."""
        return f"k8s:enc:{self.provider}:v1:{self.name}:".encode()

    def to_dict(self) -> dict[str, str]:
        return {"provider": self.provider, "name": self.name, "secret": self.secret}


def new_key(provider: str, taken: Sequence[Key] = ()) -> Key:
    """A fresh random key named keyN, N one more than the highest keyN in ``taken``."""
    numbers = [int(k.name[3:]) for k in taken if k.name.startswith("key") and k.name[3:].isdigit()]
    return Key(provider, f"key{max(numbers, default=0) + 1}",
               base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii"))


def render_keys(keys: Sequence[Key]) -> bytes:
    """The EncryptionConfiguration for Secrets: ``keys`` in order (the first encrypts, every one
    decrypts; consecutive keys of one provider share its entry), identity last (reads what was stored
    before encryption)."""
    providers: list[dict[str, Any]] = []
    for k in keys:
        if providers and k.provider in providers[-1]:
            providers[-1][k.provider]["keys"].append({"name": k.name, "secret": k.secret})
        else:
            providers.append({k.provider: {"keys": [{"name": k.name, "secret": k.secret}]}})
    config = {
        "apiVersion": API_VERSION,
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": [*providers, {"identity": {}}]}],
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False).encode()


def render(provider: str, secret: bytes) -> bytes:
    """The EncryptionConfiguration for Secrets: ``provider`` with one key first, identity last."""
    return render_keys([Key(provider, "key1", base64.b64encode(secret).decode("ascii"))])


def _refuse(path: object, problem: str, fix: str) -> HardwayError:
    return HardwayError(
        f"{path}: {problem}; hardway will not overwrite it, because a new key would make every Secret "
        f"stored with the old one unreadable: {fix}"
    )


_RESTORE = ("restore it from a backup, or, only for a cluster that has never stored a Secret, "
            "delete it and run invoke pki")


def parse(data: bytes, path: object) -> list[Key]:
    """The keys of a config, first (the one that encrypts) first. Raises (without echoing the file:
    it holds the keys) unless it is a config hardway would write."""
    try:
        doc: Any = yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:  # its str() quotes the line, which may hold the key
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise _refuse(path, f"is not valid YAML (line {line}: {exc.problem})", _RESTORE) from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise _refuse(path, "is not valid YAML", _RESTORE) from None
    keys: list[Key] = []
    try:
        if doc["apiVersion"] != API_VERSION or doc["kind"] != "EncryptionConfiguration":
            raise _refuse(path, f"is not an EncryptionConfiguration ({API_VERSION})", _RESTORE)
        entry = next(r for r in doc["resources"] if "secrets" in r["resources"])
        for i, provider_entry in enumerate(entry["providers"]):
            (provider, conf), = provider_entry.items()
            if provider == "identity":
                if i == 0:
                    raise _refuse(path, "lists identity first: Secrets are stored unencrypted", _RESTORE)
                continue
            if provider not in KEY_SIZES:
                raise _refuse(path, f"uses provider {provider!r}, which hardway does not manage", _RESTORE)
            for k in conf["keys"]:
                size = len(base64.b64decode(k["secret"], validate=True))
                if size not in KEY_SIZES[provider]:
                    *more, last = map(str, KEY_SIZES[provider])
                    sizes = f"{', '.join(more)} or {last}" if more else last
                    raise _refuse(path, f"key {k.get('name')!r} is not {sizes} bytes", _RESTORE)
                keys.append(Key(provider, str(k["name"]), str(k["secret"])))
    except (KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError):
        raise _refuse(path, "does not have resources[secrets].providers with base64 keys", _RESTORE) from None
    if not keys:
        raise _refuse(path, "lists no keys", _RESTORE)
    return keys


def load(state: PkiState) -> list[Key]:
    """The keys of the PKI dir's config (``invoke pki`` writes it)."""
    try:
        return parse(state.encryption_config.read_bytes(), state.encryption_config)
    except FileNotFoundError:
        raise HardwayError(f"{state.encryption_config}: missing; run `invoke pki` first") from None


def rotation_under_way(state: PkiState) -> bool:
    """A key rotation was begun and not finished (its state file holds no ``done``)."""
    try:
        doc = yaml.safe_load((state.root / ROTATION_STATE).read_bytes())
    except (FileNotFoundError, yaml.YAMLError):
        return False
    return not (isinstance(doc, dict) and doc.get("done"))


def _validate(inv: Inventory, state: PkiState, data: bytes) -> None:
    """Raise unless ``data`` is a config we would write for this inventory."""
    path = state.encryption_config
    keys = parse(data, path)
    provider = keys[0].provider
    rotating = rotation_under_way(state)
    if inv.encryption_provider_given and provider != inv.encryption_provider and not rotating:
        raise _refuse(
            path, f"encrypts Secrets with {provider!r}, the inventory asks for {inv.encryption_provider!r}",
            f"set encryption.provider: {provider} in {inv.path}, or move to {inv.encryption_provider} with "
            "`invoke rotate-encryption-key` (adds the new key, rewrites every Secret, then drops the old one)",
        )


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
