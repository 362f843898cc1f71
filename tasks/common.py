"""What every task shares: locating the inventory and PKI state, parsing flags, and turning a
HardwayError into one line and exit code 1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Exit

from hardway.errors import HardwayError

if TYPE_CHECKING:  # the CLI imports the library lazily: `invoke --list` stays quick
    from hardway.chapters import Context
    from hardway.inventory import Inventory
    from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "build" / "cache"  # fetched binaries, keyed by sha256
INVENTORY_HELP = "inventory file (default: $HARDWAY_INVENTORY, else inventory/lab.yaml)"
PKI_DIR_HELP = "PKI state directory (default: pki/<cluster name>)"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a HardwayError into one line and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HardwayError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except OSError as exc:  # e.g. --pki-dir under a file, an unreadable key: one line, not a traceback
            where = f": {exc.filename}" if exc.filename else ""
            raise Exit(f"error: {exc.strerror or exc}{where}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def inventory_path(path: str | None) -> Path:
    return Path(path or os.environ.get("HARDWAY_INVENTORY") or ROOT / "inventory" / "lab.yaml")


def load_inventory(path: str | None) -> Inventory:
    from hardway import inventory

    inv = inventory.load(inventory_path(path))
    for warning in inv.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inv


MAX_SECONDS = 86400.0  # a day: every wait hardway does is far shorter
MAX_DAYS = 36500  # what pki.ca_validity_days allows; a larger timedelta overflows


def digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() then refuses with a traceback."""
    return text.isascii() and text.isdigit()


def seconds(value: object, flag: str, default: float) -> float:
    """A positive number of seconds from a flag (invoke's own int parsing would raise a traceback)."""
    if value is None:
        return default
    try:
        parsed = float(str(value))
    except ValueError:
        parsed = -1.0
    if not 0 < parsed <= MAX_SECONDS:  # also refuses nan and inf, which float() accepts
        raise HardwayError(f"{flag}: {value!r} is not a positive number of seconds (at most {MAX_SECONDS:.0f})")
    return parsed


def whole_number(value: object, flag: str) -> int | None:
    """A count from a flag, None when not given."""
    if value is not None and not digits(str(value)):
        raise HardwayError(f"{flag}: {value!r} is not a whole number")
    return None if value is None else int(str(value))


def pki_state(inv: Inventory, pki_dir: str | None) -> PkiState:
    from hardway.state import PkiState

    return PkiState(Path(pki_dir) if pki_dir else ROOT / "pki" / inv.cluster_name)


@contextmanager
def connected(inv: Inventory, state: PkiState, *, timeout: float = 90.0, adopt: bool = False,
              ) -> Iterator[Context]:
    """The task's Context: one SSH connection per node for the whole task, all closed after it."""
    from hardway import remote
    from hardway.chapters import Context

    with remote.Pool() as pool:
        yield Context(inv, state, cache_dir=CACHE_DIR, connector=pool, timeout=timeout, adopt=adopt)


def days(value: object, flag: str) -> int:
    """A number of days from a flag: 30 or 30d."""
    text = str(value).strip().lower().removesuffix("d")
    if not digits(text) or int(text) > MAX_DAYS:
        raise HardwayError(f"{flag}: {value!r} is not a number of days such as 30d (at most {MAX_DAYS})")
    return int(text)


def help_asked(value: object, name: str, fn: Callable[..., Any], helps: dict[str, str]) -> None:
    """invoke hands ``--help`` to a task's missing positional argument instead of printing help: do it here."""
    if value not in ("-h", "--help"):
        return
    doc = (fn.__doc__ or "").strip()
    lines = [f"Usage: invoke [--core-opts] {name} [--options] [other tasks here ...]", "", f"Docstring:\n  {doc}", "",
             "Options:"]
    lines += [f"  --{flag:<16} {text}" for flag, text in helps.items()]
    raise Exit("\n".join(lines), code=0)
