"""What the benchmarks share: running a task as a user types it, the hand way's ssh options, and the
host's CPU time (the lab's nodes share this host's cores: a step that keeps them all busy is CPU-bound)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hardway import lab
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def host_cpu_seconds() -> float:
    """CPU time the whole host has spent working (every process, the lab's nodes included)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def measured(fn: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, host CPU seconds, value) of ``fn()``."""
    cpu0, t0 = host_cpu_seconds(), time.monotonic()
    value = fn()
    return time.monotonic() - t0, host_cpu_seconds() - cpu0, value


def cli(the_lab: lab.Lab, state: PkiState, *args: str, timeout: int = 600) -> tuple[float, str]:
    """`invoke ARGS` on the lab's inventory and PKI dir in a new process: (seconds, stdout)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args, "--inventory",
                           str(the_lab.inventory_path), "--pki-dir", str(state.root)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"`invoke {' '.join(args)}` failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return time.monotonic() - t0, proc.stdout


def ssh_options(inv) -> list[str]:  # inv: hardway.inventory.Inventory
    """The options the hand way passes to every ssh/scp: the lab's key and recorded host keys, no prompts."""
    return ["-i", str(inv.ssh.key), "-o", f"UserKnownHostsFile={inv.ssh.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
