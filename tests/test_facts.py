"""Fact parsers on outputs recorded from real lab nodes (tests/data/facts/<fact>/<case>), and the
pure decisions taken from them (what to push, what to start or restart)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hardway import deploy, facts, inventory, services
from hardway.chapters.etcd import cluster as etcd_cluster
from hardway.chapters.etcd import datadir, ids, preflight
from hardway.errors import HardwayError
from hardway.facts import FactOutput, FileStat, UnitState
from hardway.files import File

DATA = Path(__file__).parent / "data" / "facts"
INV = inventory.load(Path(__file__).resolve().parent.parent / "inventory" / "sample.yaml")
PATHS = ["/etc/etcd/ca.crt", "/etc/etcd/etcd.key", "/etc/etcd/missing.pem"]


def recorded(fact: str, case: str) -> FactOutput:
    text = (DATA / fact / case).read_text()
    if fact == "etcd_health":  # recorded as "<exit code>\n<output>"
        code, _, out = text.partition("\n")
        return FactOutput(out, int(code))
    return FactOutput(text, 0)


def test_file_hashes_and_stats_name_the_missing_file_none() -> None:
    hashes = facts.file_hashes(PATHS).parse(recorded("file_hashes", "two-present-one-missing.txt"))
    assert set(hashes) == set(PATHS) and hashes["/etc/etcd/missing.pem"] is None
    assert all(len(hashes[p] or "") == 64 for p in PATHS[:2])
    stats = facts.file_stats(PATHS).parse(recorded("file_stats", "two-present-one-missing.txt"))
    assert stats["/etc/etcd/etcd.key"] is not None and stats["/etc/etcd/etcd.key"].mode == 0o600
    assert (stats["/etc/etcd/ca.crt"].owner, stats["/etc/etcd/ca.crt"].mode) == ("root", 0o644)
    assert stats["/etc/etcd/ca.crt"].mtime > 1_700_000_000 and stats["/etc/etcd/missing.pem"] is None
    assert stats["/etc/etcd/ca.crt"].changed >= stats["/etc/etcd/ca.crt"].mtime


def test_unit_states_of_a_running_an_absent_and_a_stopped_unit() -> None:
    states = facts.unit_states(("etcd", "kubelet")).parse(recorded("unit_states", "etcd-active-kubelet-absent.txt"))
    assert states["etcd"].active == "active" and states["etcd"].enabled == "enabled"
    assert states["etcd"].main_pid > 0 and states["etcd"].since is not None
    assert states["kubelet"] == UnitState("inactive", None, "", 0)
    stopped = facts.unit_states(("etcd",)).parse(recorded("unit_states", "etcd-inactive.txt"))["etcd"]
    assert stopped.active == "inactive" and stopped.main_pid == 0


def test_listeners_say_which_process_holds_each_port() -> None:
    held = facts.parse_listeners(recorded("listeners", "etcd-and-sshd.txt"))
    assert held[2379][1] == "etcd" and held[2380][1] == "etcd" and held[22][1] == "sshd"
    assert held[2379][0] == held[2380][0] > 0


def test_the_deployment_record_reads_back() -> None:
    record = deploy.parse_record(recorded("deployed", "etcd-chapter.json"))
    assert record["/etc/etcd/etcd.key"].mode == 0o600 and record["/etc/etcd/etcd.key"].chapter == "etcd"
    assert len(record) == 6
    assert deploy.parse_record(FactOutput("", 0)) == {}, "no record yet: nothing deployed"
    with pytest.raises(HardwayError, match="is not hardway's deployment record"):
        deploy.parse_record(FactOutput('{"files": {"/x": {"sha256": 1}}}', 0))


def test_etcd_answers() -> None:
    status = json.loads(recorded("etcd_status", "three-members.json").stdout)
    assert status[0]["Status"]["leader"] > 0
    members = json.loads(recorded("etcd_members", "three-members.json").stdout)["members"]
    assert len(members) == 3 and all(m["peerURLs"] for m in members)
    health = etcd_cluster.health(INV, INV.controllers[0])
    assert health.parse(recorded("etcd_health", "healthy.txt"))[0] is True
    ok, text = health.parse(recorded("etcd_health", "stopped.txt"))
    assert not ok and text.endswith("Error: unhealthy cluster")
    # JSON member IDs are decimal; etcdctl takes hex
    parsed = etcd_cluster.parse_members(etcd_cluster.members(INV, INV.controllers[0]).parse(
        recorded("etcd_members", "three-members.json")))
    assert parsed is not None and [m.hex for m in parsed] == [f"{m['ID']:x}" for m in members]
    # where the unit is not active, etcdctl is not asked at all (exit 3, at once)
    ok, text = health.parse(FactOutput("not asked: etcd is inactive", etcd_cluster.NOT_ASKED))
    assert not ok and text == "not asked: etcd is inactive"
    assert "systemctl is-active etcd" in health.shell and "--dial-timeout=1s" in health.shell


def test_preflight_facts_of_a_running_member() -> None:
    d = "/var/lib/etcd"
    assert datadir.entries_fact(d).parse(recorded("data_dir_entries", "member.txt")) == ["member"]
    head = datadir.wal_head_fact(d).parse(recorded("wal_head", "this-cluster.b64"))
    assert head is not None and ids.wal_metadata(head) is not None
    p99 = preflight.fsync_p99(d).parse(recorded("fsync_p99", "lab-overlay.txt"))
    assert p99 is not None and p99 > 0
    assert preflight.fsync_p99(d).parse(FactOutput("", 99)) is None, "no python3 on the node"
    assert base64.b64decode((DATA / "wal_head" / "this-cluster.b64").read_text())


def test_a_parser_that_cannot_read_its_answer_names_node_and_fact() -> None:
    class Answering:
        node = INV.controllers[0]

        def gather(self, asked, timeout=None):
            return {f.key: FactOutput("garbage", 0) for f in asked}

    with pytest.raises(HardwayError, match=r"^controller-0: cannot read fact fsync_p99 \(ValueError"):
        facts.gather(Answering(), [preflight.fsync_p99("/var/lib/etcd")])


# --- decisions from facts --------------------------------------------------------------------

UNIT = File("/etc/systemd/system/etcd.service", 0o644, content=b"u", services=("etcd",), chapter="etcd")
CERT = File("/etc/etcd/etcd.crt", 0o644, content=b"c", services=("etcd",), chapter="etcd")


def test_plan_start_starts_stopped_enables_disabled_and_restarts_only_changed() -> None:
    stats = {UNIT.path: FileStat(0o644, "root", "root", 100), CERT.path: FileStat(0o644, "root", "root", 100)}
    fresh = services.plan_start(("etcd",), [UNIT.path, CERT.path], [UNIT, CERT], {},
                                {"etcd": UnitState("inactive", None, "")})
    assert fresh == services.StartPlan(True, ("etcd",), ("etcd",), ())
    running = {"etcd": UnitState("active", 200, "enabled")}
    assert services.plan_start(("etcd",), [], [UNIT, CERT], stats, running) == services.StartPlan(False, (), (), ())
    changed = services.plan_start(("etcd",), [CERT.path], [UNIT, CERT], stats, running)
    assert changed == services.StartPlan(False, (), (), ("etcd",)) and not changed.reload


def test_a_unit_started_before_its_files_changed_is_stale() -> None:
    """Judged by ctime (when the file was replaced), which nothing can set back; not by mtime."""
    stats = {CERT.path: FileStat(0o644, "root", "root", mtime=1, changed=300)}
    assert services.stale_units([CERT], stats, {"etcd": UnitState("active", 200, "enabled")}) == {"etcd"}
    assert services.stale_units([CERT], stats, {"etcd": UnitState("active", 300, "enabled")}) == set()
    assert services.stale_units([CERT], stats, {"etcd": UnitState("inactive", 200, "enabled")}) == set()


def test_plan_push_sorts_writes_fixes_records_and_foreign_files() -> None:
    record = {UNIT.path: deploy.Deployed("0" * 64, 0o644, "root", "root", "etcd")}
    hashes = {UNIT.path: "f" * 64, CERT.path: CERT.sha256, "/etc/etcd/ca.crt": "e" * 64}
    stats = {CERT.path: FileStat(0o600, "root", "root", 1)}
    ca = File("/etc/etcd/ca.crt", 0o644, content=b"ca", chapter="etcd")
    key = File("/etc/etcd/etcd.key", 0o600, content=b"k", secret=True, chapter="etcd")
    plan = deploy.plan_push([UNIT, CERT, ca, key], hashes, stats, record)
    assert plan.write == [UNIT, key], "ours and changed, and missing"
    assert plan.fix == [CERT], "the planned bytes with the wrong mode"
    assert plan.foreign == [ca], "present, not ours, different"
    assert set(plan.record) == {UNIT.path, CERT.path, key.path} and plan.record_changed


def test_concurrently_runs_its_parts_at_once_and_parses_each() -> None:
    import subprocess
    import time

    from hardway.facts import Fact, FactOutput, concurrently

    slow = [Fact(f"part{i}", f"sleep 0.4; echo answer {i}", lambda o: (o.exit_code, o.stdout), (i,)) for i in range(3)]
    failing = Fact("failing", "printf 'no newline'; exit 3", lambda o: (o.exit_code, o.stdout))
    both = concurrently("probes", [*slow, failing])
    t0 = time.monotonic()
    out = subprocess.run(["sh", "-c", both.shell], capture_output=True, text=True)
    assert time.monotonic() - t0 < 1.0, "three 0.4 s parts ran at the same time"
    values = both.parse(FactOutput(out.stdout, out.returncode))
    assert [values[f.key] for f in slow] == [(0, f"answer {i}") for i in range(3)]
    assert values[failing.key] == (3, "no newline")


def test_a_stamped_big_file_is_known_by_size_and_mtime_and_read_when_either_differs(tmp_path: Path) -> None:
    import hashlib
    import os
    import subprocess

    big = tmp_path / "etcd"
    big.write_bytes(b"x" * 100)
    real = hashlib.sha256(big.read_bytes()).hexdigest()
    os.utime(big, (1_000_000_123, 1_000_000_123))
    claimed = "c" * 64  # what the stamp vouches for; returned only if the file is not read

    def run(stamped: dict) -> dict:
        fact = facts.file_hashes([str(big)], stamped)
        out = subprocess.run(["sh", "-c", fact.shell], capture_output=True, text=True, check=True).stdout
        return fact.parse(FactOutput(out, 0))

    assert run({str(big): (claimed, 100, 1_000_000_123)}) == {str(big): claimed}, "trusted: not read"
    assert run({str(big): (claimed, 100, 1_000_000_124)}) == {str(big): real}, "another mtime: read"
    assert run({str(big): (claimed, 99, 1_000_000_123)}) == {str(big): real}, "another size: read"
    assert run({}) == {str(big): real}


def test_big_files_get_their_stamp_when_installed_and_small_ones_keep_real_times() -> None:
    binary = File("/usr/local/bin/etcd", 0o755, content=b"\x7fELF" + b"x" * (1 << 20))
    config = File("/etc/etcd/ca.crt", 0o644, content=b"ca")
    assert binary.stamp is not None and config.stamp is None
    plan = deploy.plan_push([binary, config], {}, {}, {})
    script = deploy.push_script(plan, "/var/lib/hardway/staging/run-x")
    steps = script.split("; ")
    assert steps.count(f"touch -m -d @{binary.stamp} /var/lib/hardway/staging/run-x/0") == 1
    assert sum(s.startswith("touch -m -d @") for s in steps) == 1, "only the big file is stamped"


def test_a_fact_asked_only_where_the_chapter_is_deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The survey's check facts run only where the record lists the chapter (run here by a real shell)."""
    import subprocess

    record = tmp_path / "deployed.json"
    monkeypatch.setattr(deploy, "RECORD", str(record))
    stats = facts.file_stats([str(record)])
    guarded = facts.only_where(deploy.holds("etcd"), stats)
    assert guarded.key == stats.key, "the checks find it under the key they ask by"

    def ask() -> facts.FactValues:
        done = subprocess.run(["sh", "-c", guarded.shell], capture_output=True, text=True)
        return facts.FactValues({guarded.key: guarded.parse(FactOutput(done.stdout, done.returncode))}).answered()

    assert stats not in ask(), "no record: not asked"
    other = {"ca.crt": deploy.Deployed("0" * 64, 0o644, "root", "root", "pki")}
    record.write_bytes(deploy.record_bytes(other))
    assert stats not in ask(), "another chapter's files only: not asked"
    record.write_bytes(deploy.record_bytes({**other, "etcd.service": deploy.Deployed("1" * 64, 0o644, "root", "root",
                                                                                        "etcd")}))
    assert ask()[stats][str(record)] is not None, "deployed here: asked, and read as the fact itself reads"
