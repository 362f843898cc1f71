"""Day 2 on real etcd (the lab): every printed fix run as printed, replace under a writing client,
10,000 keys through snapshot/delete/restore, reset then rejoin, diagnose on a broken cluster, Ctrl-C.

The tests run in file order on this module's own lab (3 controllers), so they never disturb the
session lab other modules share; each one that breaks the cluster leaves it healthy again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from hardway import jumpbox, remote
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import ctl
from hardway.checks import FAIL, OK
from hardway.remote import Progress
from hardway.state import PkiState
from tests.etcd_client import Client, Writer

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


class Env:
    def __init__(self, lab, state: PkiState, client: Client) -> None:
        self.lab, self.inv, self.state, self.client = lab, lab.inventory, state, client

    def node(self, name: str):
        return self.inv.node(name)

    def on(self, name: str, command: str, check: bool = True) -> remote.CommandResult:
        r = remote.connect(self.inv, self.node(name))
        try:
            return r.run(command, check=check, timeout=120)
        finally:
            r.close()

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args, "--inventory",
                               str(self.lab.inventory_path), "--pki-dir", str(self.state.root)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    def ctx(self, lines: list[str] | None = None) -> Context:
        sink = lines.append if lines is not None else (lambda _l: None)
        return Context(self.inv, self.state, progress=Progress(sink=sink), timeout=90)

    def verify(self) -> list:
        return ETCD.verify(self.ctx())

    def failures(self) -> list:
        return [r for r in self.verify() if r.status == FAIL]

    def healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.failures():
                return
            time.sleep(1)
        assert not self.failures(), self.failures()

    def make_stale(self, name: str) -> None:
        """``name``'s data dir becomes a member dir of an OLDER cluster at the same peer URLs (a
        snapshot restored with another token), and etcd starts on it: the mismatch story."""
        others = [n for n in self.inv.controllers if n.name != name]
        initial = ",".join(f"{c.name}={self.inv.etcd_peer_url(c)}" for c in self.inv.controllers)
        self.on(others[0].name, ctl(self.inv, others[0], "snapshot save /root/older.db") + " >/dev/null")
        chunks: list[bytes] = []
        r = remote.connect(self.inv, others[0])
        try:
            r.fetch("cat /root/older.db; rm -f /root/older.db", chunks.append)
        finally:
            r.close()
        r = remote.connect(self.inv, self.node(name))
        try:
            r.feed("cat > /root/older.db", lambda out: out.write(b"".join(chunks)))
        finally:
            r.close()
        self.on(name, "systemctl stop etcd && "
                      f"ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore /root/older.db --name {name} "
                      f"--initial-cluster {initial} --initial-cluster-token an-older-cluster "
                      f"--initial-advertise-peer-urls {self.inv.etcd_peer_url(self.node(name))} --data-dir /root/older "
                      ">/dev/null 2>&1 && mkdir -p /root/was && mv /var/lib/etcd/member /root/was/member-$(date +%s%N) "
                      "&& mv /root/older/member /var/lib/etcd/member && rm -rf /root/older /root/older.db && "
                      "systemctl start --no-block etcd")


@pytest.fixture(scope="module")
def env(lab_factory, tmp_path_factory) -> Env:
    lab = lab_factory(controllers=3, workers=0)
    state = PkiState(lab.state_dir / "pki" / lab.inventory.cluster_name)
    jumpbox.generate(lab.inventory, state)
    e = Env(lab, state, Client(lab.inventory, state, tmp_path_factory.mktemp("etcd-client")))
    # a freshly formatted disk at the data dir holds lost+found: etcd accepts it, so must preflight
    e.on("controller-2", f"mkdir -p {lab.inventory.etcd.data_dir}/lost+found")
    lines: list[str] = []
    report = ETCD.apply(e.ctx(lines))
    assert not [r for r in report.results if r.status == FAIL], report.results
    e.lines = lines  # type: ignore[attr-defined]
    return e


def test_preflight_prints_every_nodes_fsync_figure_and_accepts_lost_found(env: Env) -> None:
    for n in env.inv.controllers:
        assert any(re.fullmatch(rf"\[{n.name}\] (ok|warn): fdatasync p99 \d+\.\d\d ms in /var/lib/etcd \(etcd wants "
                                r"< 10 ms\).*", line) for line in env.lines), env.lines  # type: ignore[attr-defined]
    assert "lost+found" in env.on("controller-2", "ls -A /var/lib/etcd").stdout.split()
    done = env.invoke("verify", "--chapter", "etcd", "--json")
    fsync = [r for r in json.loads(done.stdout)["results"] if r["check"] == "disk-fsync"]
    assert sorted(r["node"] for r in fsync) == ["controller-0", "controller-1", "controller-2"]
    assert all("(etcd wants < 10 ms)" in r["detail"] for r in fsync)


def test_degraded_verify_is_fast_says_quorum_is_kept_and_its_hint_works_as_printed(env: Env) -> None:
    env.on("controller-0", "systemctl stop etcd")
    t0 = time.monotonic()
    results = env.verify()
    took = time.monotonic() - t0
    assert took <= 3.0, f"verify took {took:.1f}s with one member stopped"
    quorum = next(r for r in results if r.check == "quorum")
    assert quorum.detail.startswith("2 of 3 members up, quorum kept, writes work (a hardway key written through ")
    health = next(r for r in results if r.check == "endpoint-health" and r.node == "controller-0")
    assert health.detail == "not asked: etcd is inactive here"
    active = next(r for r in results if r.check == "unit-active" and r.node == "controller-0")
    assert [r for r in results if r.status == FAIL] == [active]
    fix = re.search(r"`(invoke [^`]+)`", active.hint).group(1)  # type: ignore[union-attr]
    assert fix == "invoke bootstrap-etcd"
    done = env.invoke(*shlex.split(fix)[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    env.healthy()


def replace_while_writing(env: Env, name: str) -> Writer:
    """`invoke etcd.replace NAME` while a client writes through the other members."""
    others = [n for n in env.inv.controllers if n.name != name]
    writer = Writer(env.client, others, f"/hardway-test/{name}-{time.monotonic_ns()}")
    writer.start()
    time.sleep(1.0)
    try:
        done = env.invoke("etcd.replace", name)
        time.sleep(1.0)
    finally:
        writer.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^etcd\.replace {name}: member [0-9a-f]+ joined and in sync in \d+\.\ds", done.stdout, re.M)
    assert writer.failed == [], writer.failed
    assert len(writer.acked) > 10, "the client wrote throughout"
    stored = env.client.get_prefix(env.inv.controllers, writer.prefix)
    lost = {k: v for k, v in writer.acked.items() if stored.get(k) != v}
    assert lost == {}, f"{len(lost)} acknowledged writes lost"
    env.healthy()
    return writer


def test_a_member_wiped_by_hand_comes_back_through_replace_while_a_client_writes(env: Env) -> None:
    env.on("controller-1", "systemctl stop etcd; rm -rf /var/lib/etcd/member; systemctl start --no-block etcd")
    replace_while_writing(env, "controller-1")


def test_the_cluster_id_mismatch_story_is_blamed_on_the_stale_member_and_replace_fixes_it(env: Env) -> None:
    env.make_stale("controller-0")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the peers have logged the mismatch
        if "cluster ID mismatch" in env.on("controller-1", "journalctl -u etcd -n 50 --no-pager -o cat").stdout:
            break
        time.sleep(0.5)
    results = env.verify()
    bad = {(r.check, r.node) for r in results if r.status == FAIL}
    assert ("data-dir", "controller-0") in bad and not any(n in ("controller-1", "controller-2") for _, n in bad), bad
    echo = next(r for r in results if r.check == "journal" and r.node == "controller-1")
    assert echo.status != FAIL and "controller-0" in echo.hint
    refused = env.invoke("bootstrap-etcd")
    assert refused.returncode == 1
    line = next(ln for ln in refused.stderr.splitlines() if ln.startswith("error:"))
    assert "controller-0: /var/lib/etcd holds member" in line and "an-older-cluster" not in line
    fix = re.search(r"fix: `(invoke [^`]+)`", line).group(1)  # type: ignore[union-attr]
    assert fix == "invoke etcd.replace controller-0"
    replace_while_writing(env, "controller-0")


def test_the_printed_fix_for_a_stale_dir_works_as_printed_when_nothing_serves(env: Env) -> None:
    env.make_stale("controller-2")
    for n in env.inv.controllers:
        env.on(n.name, "systemctl stop etcd")
    refused = env.invoke("bootstrap-etcd")
    assert refused.returncode == 1, refused.stdout
    line = next(ln for ln in refused.stderr.splitlines() if ln.startswith("error:"))
    assert "controller-2: /var/lib/etcd holds member" in line
    fix = re.search(r"fix: on controller-2, `([^`]+)`, then `invoke bootstrap-etcd`", line).group(1)  # type: ignore
    env.on("controller-2", fix)  # exactly as printed
    assert env.on("controller-2", "ls -A /var/lib/etcd").stdout.split() == ["lost+found"]
    done = env.invoke("bootstrap-etcd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "member add controller-2" in done.stdout, "it joined the members that held the data"
    env.healthy()


def test_mixed_data_dirs_are_named_before_anything_starts_and_the_printed_fix_works(env: Env) -> None:
    for n in env.inv.controllers:
        env.on(n.name, "systemctl stop etcd")
    for name in ("controller-1", "controller-2"):  # wiped; controller-0 keeps the old data
        env.on(name, "mkdir -p /root/was && mv /var/lib/etcd/member /root/was/member-$(date +%s%N)")
    refused = env.invoke("bootstrap-etcd")
    assert refused.returncode == 1
    line = next(ln for ln in refused.stderr.splitlines() if ln.startswith("error:"))
    assert "controller-0 hold(s) this cluster's data but controller-1, controller-2 have none, and no member " \
           "serves" in line
    for n in env.inv.controllers:
        assert env.on(n.name, "systemctl is-active etcd", check=False).stdout.strip() == "inactive", "nothing started"
    fix = re.search(r"To start empty: on controller-0, `([^`]+)`, then `invoke bootstrap-etcd`", line).group(1)  # type: ignore
    env.on("controller-0", fix)
    done = env.invoke("bootstrap-etcd")
    assert done.returncode == 0, done.stdout + done.stderr
    env.healthy()


def test_ten_thousand_keys_survive_snapshot_delete_restore(env: Env) -> None:
    items = {f"/hardway-test/bulk/{i:05d}": f"value-{i}" for i in range(10_000)}
    env.client.put_many(env.inv.controllers, items)
    done = env.invoke("etcd.snapshot")
    assert done.returncode == 0, done.stdout + done.stderr
    path = Path(re.search(r"^etcd\.snapshot: (\S+) \(", done.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert path.parent == env.state.root.parent / "backups" / env.inv.cluster_name
    for p in (path, Path(f"{path}.sha256"), Path(f"{path}.json")):
        assert p.stat().st_mode & 0o777 == 0o600
    check = subprocess.run(["sha256sum", "-c", f"{path.name}.sha256"], cwd=path.parent, capture_output=True)
    assert check.returncode == 0
    meta = json.loads(Path(f"{path}.json").read_text())
    assert meta["keys"] >= 10_000
    assert env.client.run(env.inv.controllers, "del", "/hardway-test/bulk/", "--prefix").returncode == 0
    assert env.client.count(env.inv.controllers, "/hardway-test/bulk/") == 0
    done = env.invoke("etcd.restore", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert env.client.get_prefix(env.inv.controllers, "/hardway-test/bulk/") == items
    env.healthy()


def test_a_damaged_snapshot_and_an_unreachable_member_are_refused_in_one_line(env: Env, tmp_path: Path) -> None:
    backups = env.state.root.parent / "backups" / env.inv.cluster_name
    good = sorted(backups.glob("*.db"))[-1]
    bad = tmp_path / good.name
    bad.write_bytes(good.read_bytes() + b"x")
    (tmp_path / f"{good.name}.sha256").write_bytes(Path(f"{good}.sha256").read_bytes())
    done = env.invoke("etcd.restore", str(bad))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "sha256 is" in done.stderr and "restore another snapshot" in done.stderr
    env.lab.stop_node("controller-2")
    try:
        done = env.invoke("etcd.restore", str(good))
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "a restore rewrites every member, but controller-2 cannot be reached" in done.stderr
        assert "(nothing was changed)" in done.stderr
        up = [env.node("controller-0"), env.node("controller-1")]
        assert env.client.count(up, "/hardway-test/bulk/") == 10_000, "the cluster was left as it was"
    finally:
        env.lab.start_node("controller-2")
    env.healthy()


def test_reset_then_bootstrap_rejoins_a_clean_node(env: Env) -> None:
    done = env.invoke("reset", "controller-2", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    left = env.on("controller-2", "ls /etc/etcd /var/lib/hardway/deployed.json /etc/systemd/system/etcd.service "
                                  "/usr/local/bin/etcd 2>&1; systemctl is-enabled etcd 2>&1; ls -A /var/lib/etcd",
                  check=False).stdout
    assert left.count("No such file or directory") == 4, left
    assert "lost+found" in left and "member" not in left.split()
    up = [env.node("controller-0"), env.node("controller-1")]
    members = json.loads(env.client.run(up, "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == ["controller-0", "controller-1"], "its member was removed"
    done = env.invoke("bootstrap-etcd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "member add controller-2" in done.stdout
    env.healthy()
    assert env.client.count([env.node("controller-2")], "/hardway-test/bulk/") == 10_000


def test_diagnose_names_the_cause_of_a_broken_cluster_and_holds_no_secret(env: Env) -> None:
    env.make_stale("controller-1")
    time.sleep(3)
    done = env.invoke("diagnose", "--lines", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^controller-1 etcd data dir: /var/lib/etcd holds member [0-9a-f]+ of cluster [0-9a-f]+, not "
                     r"of this cluster", done.stdout, re.M), done.stdout
    assert "fix:   `invoke etcd.replace controller-1`" in done.stdout
    bundle = Path(re.search(r"bundle (\S+\.tar\.gz)", done.stdout).group(1))  # type: ignore[union-attr]
    assert bundle.stat().st_mode & 0o777 == 0o600
    secret = re.search(r"secret: (\S+)", env.state.encryption_config.read_text()).group(1)  # type: ignore[union-attr]
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        text = "".join(tar.extractfile(m).read().decode(errors="replace") for m in tar.getmembers() if m.isfile())
    for n in env.inv.controllers:
        for part in ("units/etcd.service", "status.txt", "journal/etcd.log", "etcd.txt", "certs.txt", "disk.txt",
                     "ports.txt", "routes.txt", "resolv.conf"):
            assert any(x.endswith(f"{n.name}/{part}") for x in names), (n.name, part)
    assert "PRIVATE KEY" not in text and secret not in text and "client-key-data" not in text
    assert "X509v3 Subject Alternative Name" in text and "notAfter=" in text and "fdatasync p99" in text
    assert env.invoke("etcd.replace", "controller-1").returncode == 0
    env.healthy()


def test_ctrl_c_midway_leaves_the_cluster_no_worse_and_says_what_to_run(env: Env) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(ROOT), "etcd.replace", "controller-0",
                             "--inventory", str(env.lab.inventory_path), "--pki-dir", str(env.state.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "move its data aside" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: etcd.replace controller-0: interrupted (Ctrl-C) at step ")
    finish = re.search(r"to finish, run `(invoke [^`]+)`$", errors[0])
    if finish:  # past the point of no return: the message names the command, and it works
        done = env.invoke(*shlex.split(finish.group(1))[1:])
        assert done.returncode == 0, done.stdout + done.stderr
    else:  # undone: the member runs on its old data dir again
        assert errors[0].endswith("the cluster is as it was before")
    env.healthy()


def test_a_snapshot_timer_takes_snapshots_on_the_controllers(env: Env) -> None:
    done = env.invoke("etcd.snapshot", "--schedule", "hourly")
    assert done.returncode == 0, done.stdout + done.stderr
    env.on("controller-0", "systemctl start hardway-etcd-snapshot.service")
    listing = env.on("controller-0", "cd /var/lib/hardway/snapshots && ls && sha256sum -c scheduled-*.sha256").stdout
    assert re.search(r"scheduled-\d{8}T\d{6}Z\.db: OK", listing), listing
    assert env.on("controller-1", "systemctl is-enabled hardway-etcd-snapshot.timer").stdout.strip() == "enabled"
    assert not [r for r in env.verify() if r.status == FAIL]
    assert env.invoke("etcd.snapshot", "--schedule", "off").returncode == 0
    gone = env.on("controller-1", "ls /etc/systemd/system/hardway-etcd-snapshot.timer 2>&1; true").stdout
    assert "No such file" in gone
    assert all(r.status == OK for r in env.verify() if r.check == "quorum")
