"""What the benchmarks share: running a task as a user types it, and the hand way's ssh options."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hardway import lab
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent


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
