"""The CLI contract: a bad flag is one line on stderr naming the flag, exit code 1, no traceback.

Every task's flags are covered. invoke itself answers for flags it cannot parse (an unknown flag, a
missing value, a value after a boolean flag): its own one line, exit 1. The lab cases carry a
private, never-booted lab name and, where the flag under test is checked in tasks/, also a
public subnet, which lab.up refuses before it starts anything: a broken flag check can then never
boot a lab from this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = "--name zzflags --subnet 8.8.8.0/24"

# command (after `invoke`) -> expected start of the single stderr line. PKI stands for a fresh
# --pki-dir, FILE for a regular file, DIR for a directory.
BAD_FLAGS = {
    # pki (generate)
    "pki --renew-within-days x": "error: --renew-within-days: 'x' is not a whole number of days",
    "pki --renew-within-days 99999999999": "error: --renew-within-days: '99999999999' is not a whole number of "
                                           "days from 0 to 36500",
    "pki --renew-within-days ²": "error: --renew-within-days: '²' is not a whole number of days",
    "pki --rotate-ca yes": "No idea what 'yes' is!",
    "pki --bogus": "No idea what '--bogus' is!",
    "pki --inventory DIR": "error: DIR: cannot read inventory: Is a directory",
    "pki --inventory DIR/nope.yaml": "error: DIR/nope.yaml: inventory not found; pass --inventory PATH",
    "pki --pki-dir FILE/pki": "error: Not a directory: FILE/pki",
    # pki.check
    "pki.check --renew-within-days -3": "error: --renew-within-days: '-3' is not a whole number of days",
    "pki.check --renew-within-days 99999999999": "error: --renew-within-days: '99999999999' is not a whole number",
    "pki.check --inventory": "Flag <Argument: inventory> needed value and was not given one!",
    # render
    "render --node nobody --pki-dir PKI": "error: ",
    "render --node": "Flag <Argument: node> needed value and was not given one!",
    "render --pki-dir DIR/none": "error: PKI state DIR/none missing: run `invoke pki`",
    "render --pki-dir PKI --out FILE/out": "error: Not a directory: FILE/out",
    # bootstrap-etcd (the flags are checked before anything is fetched or dialed)
    "bootstrap-etcd --timeout x": "error: --timeout: 'x' is not a positive number of seconds",
    "bootstrap-etcd --timeout nan": "error: --timeout: 'nan' is not a positive number of seconds",
    "bootstrap-etcd --timeout inf": "error: --timeout: 'inf' is not a positive number of seconds",
    "bootstrap-etcd --timeout 1e400": "error: --timeout: '1e400' is not a positive number of seconds",
    "bootstrap-etcd --timeout -5": "error: --timeout: '-5' is not a positive number of seconds",
    # bootstrap-control-plane
    "bootstrap-control-plane --timeout never": "error: --timeout: 'never' is not a positive number of seconds",
    # kubeconfig.admin
    "kubeconfig.admin --pki-dir PKI --out FILE/config": "error: Not a directory: FILE/config",
    "kubeconfig.admin --out DIR/config": "error: kubeconfig admin needs ",
    # verify
    "verify --chapter dns": "error: --chapter: 'dns' is not one of: pki, etcd, control-plane",
    "verify --json yes": "No idea what 'yes' is!",
    # rotate-certs
    "rotate-certs --dry-run --timeout 0": "error: --timeout: '0' is not a positive number of seconds",
    "rotate-certs --dry-run --expiring-within soon": "error: --expiring-within: 'soon' is not a number of days",
    "rotate-certs --dry-run --expiring-within -1d": "error: --expiring-within: '-1d' is not a number of days",
    "rotate-certs --dry-run --expiring-within 99999999999d": "error: --expiring-within: '99999999999d' is not a "
                                                             "number of days such as 30d (at most 36500)",
    # day 2: every refusal below comes before any node is dialed (the sample's nodes are not the lab's)
    "etcd.replace controller-0 --timeout x": "error: --timeout: 'x' is not a positive number of seconds",
    "etcd.replace nobody": f"error: {ROOT}/inventory/sample.yaml: no node named 'nobody' (known: controller-0,",
    "etcd.replace worker-0": "error: worker-0 is not an etcd member: members run on the controllers (controller-0, "
                             "controller-1, controller-2)",
    "etcd.restore DIR/none.db": "error: DIR/none.db: no such snapshot",
    "etcd.restore FILE": "error: FILE: no file.sha256 beside it, so it cannot be checked",
    "etcd.restore FILE --timeout 0": "error: --timeout: '0' is not a positive number of seconds",
    "etcd.snapshot --schedule every-full-moon": "error: --schedule: 'every-full-moon': ",
    "reset controller-0": "error: reset removes everything hardway deployed on controller-0 (its data dirs are "
                          "moved aside); re-run with --yes",
    "reset nobody --yes": f"error: {ROOT}/inventory/sample.yaml: no node named 'nobody'",
    "reset controller-0,controller-1,controller-2 --yes": "error: controller-0, controller-1, controller-2 are "
                                                          "every controller",
    "diagnose --lines x": "error: --lines: 'x' is not a whole number",
    # lab.up / lab.down / lab.status
    f"lab.up --nodes two {LAB}": "error: --nodes: 'two' is not a whole number",
    f"lab.up --nodes ² {LAB}": "error: --nodes: '²' is not a whole number",
    f"lab.up --workers -1 {LAB}": "error: --workers: '-1' is not a whole number",
    f"lab.up --loadbalancers one {LAB}": "error: --loadbalancers: 'one' is not a whole number",
    "lab.up --name zzflags --subnet 10.78.250.0/24 --loadbalancers 2": "error: 2 load balancers: the lab runs 0 or 1",
    f"lab.up --timeout never {LAB}": "error: --timeout: 'never' is not a positive number of seconds",
    f"lab.up --timeout nan {LAB}": "error: --timeout: 'nan' is not a positive number of seconds",
    f"lab.up --timeout 1e400 {LAB}": "error: --timeout: '1e400' is not a positive number of seconds",
    "lab.up --name Bad_Name": "error: lab name 'Bad_Name' is not valid",
    "lab.up --name zzflags --nodes 0 --subnet 8.8.8.0/24": "error: ",
    "lab.up --name zzflags --subnet 10.77.0.0/33": "error: lab subnet '10.77.0.0/33' is not a network",
    "lab.up --name zzflags --subnet 8.8.8.0/24": "error: lab subnet 8.8.8.0/24 is not a private range",
    "lab.down --name ../x": "error: ",
    "lab.status --name x_y": "error: ",
}


def _run(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir(exist_ok=True)
    words = [w.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "dir"))
             .replace("PKI", str(tmp_path / "pki")) for w in command.split()]
    if not words[0].startswith("lab.") and "--pki-dir" not in words:
        words += ["--pki-dir", str(tmp_path / "pki")]
    env = {**os.environ, "HARDWAY_INVENTORY": str(ROOT / "inventory" / "sample.yaml")}
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *words],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)


@pytest.mark.parametrize("command", sorted(BAD_FLAGS))
def test_bad_flag_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    if "PKI" in command:  # a PKI to render from, so the flag under test is what fails
        assert _run("pki", tmp_path).returncode == 0
    proc = _run(command, tmp_path)
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    expected = BAD_FLAGS[command].replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "dir"))
    assert lines[0].startswith(expected), lines[0]
    if command.startswith("lab."):
        assert not Path("/var/lib/hardway/labs/zzflags").exists()  # nothing was booted


def test_a_path_under_a_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "HARDWAY_INVENTORY": str(ROOT / "inventory" / "sample.yaml")}
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "pki", "--pki-dir",
                           str(blocker / "pki")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"error: Not a directory: {blocker / 'pki'}"
