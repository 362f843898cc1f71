"""The etcd chapter's apply path (preflight, push, start, wait, rolling restart) over the fact-level fake.

Each test would fail if the logic it names were broken; `test_the_rerun_test_catches_...` shows it
for one on purpose. The same paths run against real etcd in tests/test_bootstrap_etcd.py (lab).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import CERT, UNIT_PATH
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.etcd_fakes import FakeEtcd, stale
from tests.fakes import FakeCluster, FakeFile, restart_whatever_runs

ROOT = Path(__file__).resolve().parent.parent
WAL_HEAD = (Path(__file__).parent / "data" / "etcd-3.4-wal-head.bin").read_bytes()  # another cluster's


def cluster_for(inv: inventory.Inventory, unhealthy_polls: int = 0) -> FakeCluster:
    """Controllers answering like real members (tests/etcd_fakes.py): healthy once started and polled
    ``unhealthy_polls`` times."""
    cluster = FakeCluster()
    cluster.etcd = FakeEtcd(inv, cluster, unhealthy_polls=unhealthy_polls)  # type: ignore[attr-defined]
    return cluster


def converged(inv: inventory.Inventory, state) -> FakeCluster:
    """A fake cluster that one apply has built, with what the nodes recorded during it forgotten."""
    cluster = cluster_for(inv)
    apply(inv, state, cluster)
    for node in cluster.nodes.values():
        for seen in (node.commands, node.uploads, node.starts, node.restarts, node.rounds, node.asked):
            seen.clear()
    cluster.log.clear()
    return cluster


def apply(inv, state, cluster: FakeCluster, **kw):
    ctx = Context(inv, state, connector=cluster.connector, progress=QUIET, **kw)
    return ETCD.apply(ctx)


def no_client_auth_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify's client-auth probe dials the member from the jumpbox: not part of these tests."""
    from hardway.chapters.etcd import verify

    monkeypatch.setattr(verify, "client_auth_results", lambda inv, state, node: [])


@pytest.fixture(autouse=True)
def _no_dial(monkeypatch: pytest.MonkeyPatch) -> None:
    no_client_auth_probe(monkeypatch)


def assert_nothing_changed(report, cluster: FakeCluster) -> None:
    assert report.written == {n: [] for n in report.written}, report.written
    assert report.started == {} and report.restarted == {}, (report.started, report.restarted)
    for name, node in cluster.nodes.items():
        assert node.uploads == [] and node.starts == [] and node.restarts == [], name
        assert node.commands == [], (name, node.commands)


def test_fresh_cluster_starts_every_member_in_the_push_and_then_waits(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv, unhealthy_polls=2)
    report = apply(inv, state, cluster)
    assert sorted(report.started) == [c.name for c in inv.controllers]
    assert report.restarted == {}
    assert not [r for r in report.results if r.status == "fail"], report.results
    for c in inv.controllers:
        node = cluster[c.name]
        push = next(cmd for cmd in node.commands if cmd.startswith("set -e;"))
        # Type=notify: started without blocking, in the same exec that installed the files
        assert push.endswith("systemctl start --no-block etcd"), push
        assert "systemctl enable --quiet --no-reload etcd; systemctl daemon-reload" in push, (
            "one reload, after enabling"
        )
        assert "gather etcd_health" in node.events[node.events.index("start etcd"):]
        assert node.asked.count("etcd_health") >= 3, "polled until healthy"
    # every member was started before any member was waited for: none blocks the others
    starts = [i for i, e in enumerate(cluster.log) if e.endswith(": start etcd")]
    first_wait = min(i for i, e in enumerate(cluster.log) if e.endswith(": gather etcd_health") and i > starts[0])
    assert len(starts) == 3 and max(starts) < first_wait


def test_rerun_writes_nothing_and_restarts_nothing(lab_like) -> None:
    inv, state = lab_like
    cluster = converged(inv, state)
    assert_nothing_changed(apply(inv, state, cluster), cluster)


def test_a_rerun_that_changes_nothing_asks_each_member_once_and_judges_as_verify_does(lab_like) -> None:
    inv, state = lab_like
    cluster = converged(inv, state)
    report = apply(inv, state, cluster)
    for c in inv.controllers:  # the survey read the checks' facts too (the write probe among them)
        assert len(cluster[c.name].rounds) == 1, cluster[c.name].rounds
        assert "etcd_write" in cluster[c.name].rounds[0]
    alone = ETCD.verify(Context(inv, state, connector=cluster.connector, progress=QUIET))
    assert [(r.check, r.node, r.status) for r in report.results] == [(r.check, r.node, r.status) for r in alone]
    assert not [r for r in report.results if r.status == "fail"]


def test_a_survey_that_previews_asks_no_check_fact(lab_like) -> None:
    """`invoke chapter` previews an apply through the survey: it must not write etcd's check key."""
    inv, state = lab_like
    cluster = converged(inv, state)
    from hardway.walkthrough.view import changes

    changes(Context(inv, state, connector=cluster.connector, progress=QUIET), ETCD)
    for c in inv.controllers:
        assert cluster[c.name].asked and "etcd_write" not in cluster[c.name].asked, cluster[c.name].asked


def test_a_rerun_that_writes_asks_again_after_the_push(lab_like) -> None:
    """The checks judge what the apply made, not what the survey saw before it."""
    inv, state = lab_like
    cluster = converged(inv, state)
    cluster["controller-1"].files[CERT].data = b"stale\n"
    apply(inv, state, cluster)
    for c in inv.controllers:
        log = [e for e in cluster.log if e.startswith(f"{c.name}: ")]
        pushed = max(i for i, e in enumerate(cluster.log) if e.endswith(": push"))
        assert f"{c.name}: gather etcd_write" in cluster.log[pushed:], (c.name, log)


def test_the_rerun_test_catches_a_chapter_that_restarts_every_member(lab_like, monkeypatch) -> None:
    """The logic broken on purpose: restart whatever runs. The re-run assertion must notice."""
    inv, state = lab_like
    cluster = converged(inv, state)
    restart_whatever_runs(monkeypatch)
    with pytest.raises(AssertionError):
        assert_nothing_changed(apply(inv, state, cluster), cluster)


def test_changed_members_restart_one_at_a_time_each_healthy_before_the_next(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv)
    apply(inv, state, cluster)
    cluster.log.clear()
    for c in inv.controllers[:2]:  # two members' certs changed on disk by hand
        cluster[c.name].files[CERT].data = b"stale\n"
    report = apply(inv, state, cluster)
    assert report.written == {"controller-0": [CERT], "controller-1": [CERT], "controller-2": []}
    assert report.started == {}
    assert report.restarted == {"controller-0": ["etcd"], "controller-1": ["etcd"]}
    log = [e for e in cluster.log if "restart etcd" in e or "gather etcd_health" in e]
    r0 = log.index("controller-0: restart etcd")
    r1 = log.index("controller-1: restart etcd")
    assert r0 < r1 and "controller-0: gather etcd_health" in log[r0:r1], "waits for the first before the next"
    assert cluster["controller-2"].restarts == []


def test_a_member_that_never_becomes_healthy_stops_with_the_cause_named(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv, unhealthy_polls=10**6)
    with pytest.raises(HardwayError, match=r"etcd not healthy after .*invoke verify --chapter etcd"):
        apply(inv, state, cluster, timeout=0.5)


def test_a_failed_unit_ends_the_wait_at_once(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv, unhealthy_polls=10**6)
    cluster["controller-1"].facts["unit_states"] = lambda f, n: (
        "Id=etcd.service\nActiveState=failed\nActiveEnterTimestamp=\nUnitFileState=enabled\nMainPID=0\n"
        if n.starts else "Id=etcd.service\nActiveState=inactive\nUnitFileState=disabled\nMainPID=0\n")
    with pytest.raises(HardwayError, match=r"^controller-1: etcd failed to start \(the unit failed\); see "
                                           r"`journalctl -u etcd` there.*\(and 2 more node\(s\)\)$"):
        apply(inv, state, cluster, timeout=3)


def test_an_interrupted_run_converges_by_restarting_the_member_that_missed_its_files(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv)
    apply(inv, state, cluster)
    node = cluster["controller-2"]
    node.services["etcd"].started = 0  # started before its files last changed: an earlier push's restart was lost
    report = apply(inv, state, cluster)
    assert report.written == {c.name: [] for c in inv.controllers}
    assert report.restarted == {"controller-2": ["etcd"]}


def test_a_stale_data_dir_stops_preflight_before_anything_is_pushed(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv)
    stale(cluster.etcd, "controller-0")  # type: ignore[attr-defined]
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: controller-0: /var/lib/etcd "
                                           r"holds member d622127685879b3c of cluster 6656feb867e68582"):
        apply(inv, state, cluster)
    for c in inv.controllers:
        assert cluster[c.name].commands == [] and cluster[c.name].uploads == [], c.name


def test_an_unreachable_member_stops_preflight_and_nothing_changes(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv)
    cluster["controller-2"].unreachable = True
    with pytest.raises(HardwayError, match=r"^preflight failed, nothing was changed: controller-2 \(.*unreachable"):
        apply(inv, state, cluster)
    assert all(cluster[c.name].commands == [] for c in inv.controllers[:2])


def test_a_packaged_etcd_unit_in_the_way_is_named_not_replaced(lab_like) -> None:
    inv, state = lab_like
    cluster = cluster_for(inv)
    packaged = FakeFile(b"[Service]\nExecStart=/usr/bin/etcd\n")
    cluster["controller-1"].files[UNIT_PATH] = packaged
    with pytest.raises(HardwayError, match=r"controller-1: /etc/systemd/system/etcd.service exists and was not "
                                           r"deployed by hardway.*invoke bootstrap-etcd --adopt"):
        apply(inv, state, cluster)
    assert cluster["controller-1"].files[UNIT_PATH] is packaged
    report = apply(inv, state, cluster, adopt=True)
    assert UNIT_PATH in report.written["controller-1"]
    assert any(p.startswith(f"{UNIT_PATH}.hardway-orig-") for p in cluster["controller-1"].files)


def test_verify_asks_each_member_once_unless_a_hand_edit_names_more_files(lab_like) -> None:
    """The files the rendered unit names (the data dir) are asked in the one gather; a hand-edited unit
    naming another file costs a second round trip, and that file, missing, is named."""
    inv, state = lab_like
    cluster = cluster_for(inv)
    apply(inv, state, cluster)
    ctx = Context(inv, state, connector=cluster.connector, progress=QUIET)
    for node in cluster.nodes.values():
        node.asked.clear()
    assert not [r for r in ETCD.verify(ctx) if r.status == "fail"]
    assert {name: node.asked.count("file_stats") for name, node in cluster.nodes.items()} == {
        c.name: 1 for c in inv.controllers}
    c0 = cluster.nodes[inv.controllers[0].name]
    unit = c0.files[UNIT_PATH]
    unit.data = unit.data.replace(b"--data-dir=", b"--wal-dir=/var/lib/etcd-wal \\\n  --data-dir=")
    c0.asked.clear()
    fails = [r for r in ETCD.verify(ctx) if r.status == "fail" and r.node == inv.controllers[0].name]
    assert c0.asked.count("file_stats") == 2
    assert any("references /var/lib/etcd-wal, which does not exist" in r.detail for r in fails), fails


def test_the_apply_measures_each_disk_once_and_verify_alone_measures_it_again(lab_like) -> None:
    """The checks after an apply reuse the preflight's fsync figure of the same task (seconds old);
    a verify of its own measures."""
    inv, state = lab_like
    cluster = cluster_for(inv)
    report = apply(inv, state, cluster)
    assert {n: node.asked.count("fsync_p99") for n, node in cluster.nodes.items()} == {
        c.name: 1 for c in inv.controllers}
    assert [r for r in report.results if r.check == "disk-fsync" and r.status == "ok"]
    for node in cluster.nodes.values():
        node.asked.clear()
    ETCD.verify(Context(inv, state, connector=cluster.connector, progress=QUIET))
    assert all(node.asked.count("fsync_p99") == 1 for node in cluster.nodes.values())
