"""hardway's command line: thin invoke tasks over the ``hardway`` library.

Each task parses its flags, loads the inventory, calls one library function and prints its
report. User errors (``HardwayError``) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

from hardway.errors import HardwayError

ROOT = Path(__file__).resolve().parent
INVENTORY_HELP = "inventory file (default: $HARDWAY_INVENTORY, else inventory/lab.yaml)"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a HardwayError into one line and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HardwayError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def inventory_path(path: str | None) -> Path:
    return Path(path or os.environ.get("HARDWAY_INVENTORY") or ROOT / "inventory" / "lab.yaml")


def load_inventory(path: str | None):  # -> hardway.inventory.Inventory
    from hardway import inventory

    inv = inventory.load(inventory_path(path))
    for warning in inv.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inv


def pki_state(inv, pki_dir: str | None):  # -> hardway.state.PkiState
    from hardway.state import PkiState

    return PkiState(Path(pki_dir) if pki_dir else ROOT / "pki" / inv.cluster_name)


ns = Collection()


# --- pki: certificates, kubeconfigs, encryption config (owner: PKI) -------------------------

# --- render: units and configs per node (owner: render) ------------------------------------

# --- lab: the local lab of systemd machines (owner: lab) -----------------------------------

# --- bootstrap and verify (owner: etcd chapter) --------------------------------------------

# --- rotate-certs (owner: rotation) --------------------------------------------------------
