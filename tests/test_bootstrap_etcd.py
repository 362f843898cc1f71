"""bootstrap-etcd and `verify --chapter etcd` on the lab: real sshd, real systemd, real etcd.

Tests run in file order on one bootstrapped cluster; each one that breaks something repairs it.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardway import remote
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import CERT, KEY, UNIT_PATH
from hardway.checks import FAIL, OK
from hardway.errors import HardwayError
from hardway.remote import QUIET
from hardway.state import PkiState

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


def run_on(inv, node, command: str, check: bool = True) -> remote.CommandResult:
    r = remote.connect(inv, node)
    try:
        return r.run(command, check=check)
    finally:
        r.close()


def host_etcdctl(inv, state: PkiState, endpoint_nodes, *args: str) -> subprocess.CompletedProcess[str]:
    """etcdctl on the jumpbox (the host's Debian etcd-client) with a client certificate of ours."""
    endpoints = ",".join(inv.etcd_client_url(n) for n in endpoint_nodes)
    return subprocess.run(
        ["etcdctl", f"--endpoints={endpoints}", f"--cacert={state.cert('etcd-ca')}",
         f"--cert={state.cert('apiserver-etcd-client')}", f"--key={state.key('apiserver-etcd-client')}",
         "--dial-timeout=3s", "--command-timeout=5s", *args],
        capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )


def bootstrap(inv, state):  # -> ApplyReport
    return ETCD.apply(Context(inv, state, progress=QUIET))


def verify(inv, state) -> list:
    return ETCD.verify(Context(inv, state, progress=QUIET))


def failures(results) -> list:
    return [r for r in results if r.status == FAIL]


@pytest.fixture(scope="module")
def cluster(lab, lab_pki) -> tuple:
    return lab.inventory, lab_pki


def test_bootstrap_from_scratch_then_write_through_one_member_read_through_the_others(cluster) -> None:
    inv, state = cluster
    report = bootstrap(inv, state)
    assert sorted(report.started) == [n.name for n in inv.controllers]
    assert all(len(paths) == 6 for paths in report.written.values())
    assert report.bytes_sent > 6 * 1024 * 1024, "the binaries went to every member"
    assert not failures(report.results), failures(report.results)
    c0, *others = inv.controllers
    put = host_etcdctl(inv, state, [c0], "put", "/hardway/hello", "world")
    assert put.returncode == 0 and put.stdout.strip() == "OK", put.stderr
    for node in others:
        got = host_etcdctl(inv, state, [node], "get", "/hardway/hello", "--print-value-only",
                           "--consistency=l")
        assert got.stdout.strip() == "world", (node.name, got.stderr)


def test_rerun_writes_nothing_and_restarts_nothing(cluster) -> None:
    inv, state = cluster
    pids = {n.name: run_on(inv, n, "systemctl show -p MainPID --value etcd").stdout.strip() for n in inv.controllers}
    report = bootstrap(inv, state)
    assert report.written == {n.name: [] for n in inv.controllers}
    assert report.started == {} and report.restarted == {}
    assert report.summary() == "etcd: nothing changed: 0 files written, 0 restarts"
    after = {n.name: run_on(inv, n, "systemctl show -p MainPID --value etcd").stdout.strip() for n in inv.controllers}
    assert after == pids


def test_deleted_member_cert_is_named_by_verify_and_repaired_by_bootstrap(cluster) -> None:
    inv, state = cluster
    node = inv.controllers[1]
    run_on(inv, node, f"rm -f {CERT}")
    bad = failures(verify(inv, state))
    assert any(r.node == node.name and r.detail == f"{CERT} is missing" for r in bad), bad
    report = bootstrap(inv, state)
    assert report.written[node.name] == [CERT]
    assert report.restarted == {node.name: ["etcd"]}  # its files changed under a running member
    assert not failures(report.results), failures(report.results)


def test_hand_broken_line_continuation_is_reported_as_drift_and_by_systemd(cluster) -> None:
    inv, state = cluster
    node = inv.controllers[2]
    # a space after the first continuation backslash: systemd silently drops the rest of ExecStart
    run_on(inv, node, rf"sed -i '0,/\\$/s/\\$/\\ /' {UNIT_PATH} && systemctl daemon-reload")
    bad = failures(verify(inv, state))
    mine = {r.check: r for r in bad if r.node == node.name}
    assert "unit-matches-render" in mine, bad
    assert "unit-lint" in mine and "Unknown key '--name'" in mine["unit-lint"].detail, bad
    report = bootstrap(inv, state)
    assert report.written[node.name] == [UNIT_PATH]
    assert not failures(report.results), failures(report.results)


def test_stopped_member_is_named_and_the_other_two_serve(cluster) -> None:
    inv, state = cluster
    down, *up = inv.controllers
    run_on(inv, down, "systemctl stop etcd")
    try:
        results = verify(inv, state)
        active = next(r for r in results if r.check == "unit-active" and r.node == down.name)
        assert active.status == FAIL and active.detail == "etcd is inactive (stopped)"
        assert [r.status for r in results if r.check == "unit-active" and r.node != down.name] == [OK, OK]
        assert host_etcdctl(inv, state, up[:1], "put", "/hardway/degraded", "still-here").returncode == 0
        got = host_etcdctl(inv, state, up[1:], "get", "/hardway/degraded", "--print-value-only")
        assert got.stdout.strip() == "still-here"
    finally:
        report = bootstrap(inv, state)
    assert report.started == {down.name: ["etcd"]}
    assert not failures(report.results), failures(report.results)


def test_stale_data_dir_is_refused_naming_node_path_and_fix(cluster) -> None:
    inv, state = cluster
    node = inv.controllers[0]
    foreign = (Path(__file__).parent / "data" / "etcd-3.4-wal-head.bin").read_bytes()
    r = remote.connect(inv, node)
    try:
        r.run(f"systemctl stop etcd && mv {inv.etcd.data_dir}/member /root/member.ours && "
              f"mkdir -p {inv.etcd.data_dir}/member/wal")
        wal = f"{inv.etcd.data_dir}/member/wal/0000000000000000-0000000000000000.wal"
        r.run(f"echo {base64.b64encode(foreign).decode()} | base64 -d > {wal}")  # not hardway's: not recorded
        with pytest.raises(HardwayError) as err:
            bootstrap(inv, state)
        message = str(err.value)
        assert message.startswith("preflight failed, nothing was changed: controller-0: /var/lib/etcd holds member "
                                  "d622127685879b3c of cluster 6656feb867e68582, not of this cluster")
        assert message.endswith("fix: `invoke etcd.replace controller-0` (moves it aside and re-adds the member)")
        assert r.run(f"ls {inv.etcd.data_dir}/member/wal").stdout.split() == [
            "0000000000000000-0000000000000000.wal"], "hardway must not touch the data"
        assert r.run("systemctl is-active etcd", check=False).stdout.strip() == "inactive", \
            "preflight must not start anything"
    finally:
        r.run(f"rm -rf {inv.etcd.data_dir}/member && mv /root/member.ours {inv.etcd.data_dir}/member")
        r.close()
    report = bootstrap(inv, state)
    assert report.started == {node.name: ["etcd"]} and not failures(report.results)


def test_unreachable_node_is_one_line_and_nothing_is_reported_as_success(cluster, lab) -> None:
    inv, state = cluster
    node = inv.controllers[2]
    lab.stop_node(node.name)
    try:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(ROOT), "bootstrap-etcd", "--inventory",
             str(lab.inventory_path), "--pki-dir", str(state.root)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )
        assert proc.returncode == 1
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert errors[0].startswith("error: preflight failed, nothing was changed: controller-2 (")
        assert "unreachable" in errors[0]
        assert "nothing changed: 0 files written" not in proc.stdout
        assert time.monotonic() - t0 < 60
    finally:
        lab.start_node(node.name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # etcd is enabled: it rejoins on boot
        if not failures(verify(inv, state)):
            break
        time.sleep(2)
    assert not failures(verify(inv, state))


def test_verify_task_exit_codes_and_json(cluster, lab) -> None:
    inv, state = cluster
    base = [sys.executable, "-m", "invoke", "-r", str(ROOT), "verify", "--chapter", "etcd", "--inventory",
            str(lab.inventory_path), "--pki-dir", str(state.root)]
    ok = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    import json

    assert json.loads(ok.stdout)["failed"] is False
    node = inv.controllers[1]
    run_on(inv, node, f"chmod 0644 {KEY}")
    try:
        bad = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert bad.returncode == 1
        assert f"{KEY} is 0644 root:root, want 0600" in bad.stdout
    finally:
        run_on(inv, node, f"chmod 0600 {KEY}")
