"""The CLI contract: a bad flag is one line on stderr naming the flag, exit code 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BAD_FLAGS = {
    "bootstrap-etcd --timeout x": "error: --timeout: 'x' is not a positive number of seconds",
    "rotate-certs --dry-run --timeout 0": "error: --timeout: '0' is not a positive number of seconds",
    "rotate-certs --dry-run --expiring-within soon": "error: --expiring-within: 'soon' is not a number of days",
    "verify --chapter dns": "error: --chapter: 'dns' is not one of: pki, etcd",
    "pki.check --renew-within-days -3": "error: --renew-within-days: '-3' is not a whole number of days",
    "lab.up --nodes two": "error: --nodes: 'two' is not a whole number",
    "lab.up --timeout never": "error: --timeout: 'never' is not a positive number of seconds",
    "render --node nobody": "error: ",
}


@pytest.mark.parametrize("command", sorted(BAD_FLAGS))
def test_bad_flag_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "HARDWAY_INVENTORY": str(ROOT / "inventory" / "sample.yaml")}
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *command.split(),
                           "--pki-dir" if not command.startswith("lab.") else "--name",
                           str(tmp_path / "pki") if not command.startswith("lab.") else "zz"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert lines[0].startswith(BAD_FLAGS[command]), lines[0]


def test_a_path_under_a_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "HARDWAY_INVENTORY": str(ROOT / "inventory" / "sample.yaml")}
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "pki", "--pki-dir",
                           str(blocker / "pki")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"error: Not a directory: {blocker / 'pki'}"
