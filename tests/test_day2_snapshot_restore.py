"""etcd.snapshot, etcd.restore and the snapshot timer over the fake etcd: steps, files, refusals, undo.

tests/test_day2_lab.py writes 10,000 keys, snapshots, deletes and restores them on real etcd.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from hardway.chapters import Context
from hardway.day2 import restore, schedule, snapshot
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.day2_support import commands, ran, running
from tests.etcd_fakes import FakeEtcd
from tests.fakes import FakeCluster, FakeService


def ctx_for(inv, state, cluster: FakeCluster, timeout: float = 3.0) -> Context:
    return Context(inv, state, connector=cluster.connector, progress=QUIET, timeout=timeout)


def take(inv, state, cluster: FakeCluster, out: Path) -> snapshot.Snapshot:
    return snapshot.snapshot(ctx_for(inv, state, cluster), out)[1]


def test_snapshot_status_uses_etcdutl_on_36(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv, release="3.6", etcdutl=True)
    take(inv, state, cluster, tmp_path)
    assert etcd.tools == ["/usr/local/bin/etcdutl"]


def test_a_snapshot_comes_from_a_follower_and_lands_0600_with_its_sha256_and_status(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    etcd.keys = {f"/k/{i}": str(i) for i in range(5)}
    etcd.revision = 42
    etcd.leader = etcd.member_at("controller-0")["ID"]
    snap = take(inv, state, cluster, tmp_path / "backups")
    assert snap.path.parent == tmp_path / "backups" and re.fullmatch(r"etcd-hardway-\d{8}T\d{6}Z\.db", snap.path.name)
    for p in (snap.path, snap.sha256_path, snap.meta_path):
        assert p.stat().st_mode & 0o777 == 0o600, p
    data = snap.path.read_bytes()
    assert snap.sha256_path.read_text() == f"{hashlib.sha256(data).hexdigest()}  {snap.path.name}\n"
    meta = json.loads(snap.meta_path.read_text())
    assert meta["revision"] == 42 and meta["keys"] == 5 and meta["backend_keys"] == 25
    assert meta["member"] != "controller-0", "taken from a follower"
    member = meta["member"]
    assert ran(cluster, member, r"snapshot save /var/lib/hardway/snapshots/")
    assert ran(cluster, member, r"get '' --prefix --keys-only --limit=1 -w json --rev=\"\$rev\" && sha256sum ")
    assert cluster[member].blobs == {}, "the node's copy is removed"


def test_no_snapshot_without_a_serving_member(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd = running(inv)
    for n in cluster.nodes.values():
        n.services["etcd"].active = False
    with pytest.raises(HardwayError, match=r"^no etcd member serves \(no quorum\), so no snapshot can be taken"):
        take(inv, state, cluster, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_transfer_that_does_not_match_the_nodes_sha256_leaves_no_file(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    real = etcd._sha
    etcd._sha = lambda name, cmd: type(real(name, cmd))(cmd, 0, "0" * 64 + "  x\n", "")  # type: ignore[method-assign]
    with pytest.raises(HardwayError, match=r"the transfer was damaged; run `invoke etcd\.snapshot` again"):
        take(inv, state, cluster, tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == []
    assert all(n.blobs == {} for n in cluster.nodes.values()), "undone: the node's copy removed"


# --- restore -----------------------------------------------------------------------------------


def snapshot_of(inv, state, tmp_path: Path, keys: int = 3) -> tuple[FakeCluster, FakeEtcd, snapshot.Snapshot]:
    cluster, etcd = running(inv)
    etcd.keys = {f"/k/{i}": str(i) for i in range(keys)}
    etcd.revision = 9
    return cluster, etcd, take(inv, state, cluster, tmp_path)


def test_restore_rewrites_every_member_with_its_own_name_and_a_new_token(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd, snap = snapshot_of(inv, state, tmp_path)
    old_cluster = etcd.cluster_id
    _proc, _, _ = restore.restore(ctx_for(inv, state, cluster), snap.path)
    for c in inv.controllers:
        cmd = ran(cluster, c.name, "snapshot restore")[0]
        assert f"--name {c.name} " in cmd and f"--initial-advertise-peer-urls {inv.etcd_peer_url(c)} " in cmd
        assert "--initial-cluster controller-0=https://10.240.0.10:2380,controller-1=https://10.240.0.11:2380," \
               "controller-2=https://10.240.0.12:2380 " in cmd
        assert re.search(r"--initial-cluster-token hardway-restore-\d{14} ", cmd)
        assert ran(cluster, c.name, r"sha256sum -c --quiet"), "the upload is checked on the node"
        # stopped before the restore, the old data moved aside (not deleted), started after
        cmds = cluster[c.name].commands
        stop = cmds.index("systemctl stop etcd")
        swap = next(i for i, x in enumerate(cmds) if ".restoring-" in x and "/member " in x)
        start = next(i for i, x in enumerate(cmds) if "systemctl start --no-block etcd" in x)
        assert stop < swap < start
    assert set(etcd.tools) == {"ETCDCTL_API=3 /usr/local/bin/etcdctl"}
    assert etcd.cluster_id != old_cluster and all(etcd.serving(c.name) for c in inv.controllers)
    assert len(etcd.aside) == 3 and not any("rm -rf -- /var/lib/etcd " in c for c in commands(cluster))


def test_restore_on_35_uses_etcdutl(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd, snap = snapshot_of(inv, state, tmp_path)
    etcd.release, etcd.etcdutl = "3.5", True
    etcd.tools.clear()
    restore.restore(ctx_for(inv, state, cluster), snap.path)
    assert set(etcd.tools) == {"/usr/local/bin/etcdutl"}


def test_restore_on_36_without_etcdutl_is_refused_before_anything(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd, snap = snapshot_of(inv, state, tmp_path)
    etcd.release = "3.6"
    for n in cluster.nodes.values():
        n.commands.clear()
    with pytest.raises(HardwayError, match=r"restores snapshots only with etcdutl"):
        restore.restore(ctx_for(inv, state, cluster), snap.path)
    assert commands(cluster) == []


def test_a_snapshot_whose_sha256_does_not_match_is_refused_before_any_node_is_asked(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd, snap = snapshot_of(inv, state, tmp_path)
    with snap.path.open("ab") as fh:
        fh.write(b"!")
    dialed = []
    ctx = Context(inv, state, connector=lambda i, n: dialed.append(n) or cluster.connector(i, n), progress=QUIET)
    with pytest.raises(HardwayError, match=rf"^{re.escape(str(snap.path))}: sha256 is [0-9a-f]{{16}}…, but "
                                           rf"{re.escape(snap.sha256_path.name)} records [0-9a-f]{{16}}…: the file is "
                                           "damaged or not the one recorded; restore another snapshot$"):
        restore.restore(ctx, snap.path)
    assert dialed == []


def test_a_snapshot_without_its_sha256_says_how_to_record_one(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd, snap = snapshot_of(inv, state, tmp_path)
    snap.sha256_path.unlink()
    with pytest.raises(HardwayError, match=r"cannot be checked; if you trust the file, record it: `sha256sum "):
        restore.restore(ctx_for(inv, state, cluster), snap.path)


def test_a_restore_while_a_member_is_unreachable_is_refused_and_changes_nothing(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd, snap = snapshot_of(inv, state, tmp_path)
    for n in cluster.nodes.values():
        n.commands.clear()
    cluster["controller-2"].unreachable = True
    with pytest.raises(HardwayError, match=r"^a restore rewrites every member, but controller-2 cannot be reached "
                                           r"\(controller-2 \(10\.240\.0\.12:22\): unreachable .*\); start the machine "
                                           r"or fix SSH, then re-run \(nothing was changed\)$"):
        restore.restore(ctx_for(inv, state, cluster), snap.path)
    assert commands(cluster) == []


def test_a_restore_that_fails_to_come_up_puts_the_old_cluster_back(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, etcd, snap = snapshot_of(inv, state, tmp_path)
    before = (etcd.cluster_id, {n: etcd.data[n] for n in etcd.data})
    real = etcd.serving

    def never_after_swap(name):  # the restored members never form a cluster
        return real(name) and etcd.cluster_id == before[0]

    etcd.serving = never_after_swap  # type: ignore[method-assign]
    with pytest.raises(HardwayError) as err:
        restore.restore(ctx_for(inv, state, cluster, timeout=1.0), snap.path)
    message = str(err.value)
    assert "did not all serve one cluster" in message and "undone: start every member at once" in message
    assert message.endswith("the cluster is as it was before"), message
    assert (etcd.cluster_id, dict(etcd.data)) == before
    assert all(real(c.name) for c in inv.controllers)


def test_restore_stops_what_uses_etcd_and_starts_it_again(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd, snap = snapshot_of(inv, state, tmp_path)
    cluster["controller-1"].services["kube-apiserver"] = FakeService(True, 1)
    _proc, _, _ = restore.restore(ctx_for(inv, state, cluster), snap.path)
    c1 = cluster["controller-1"].commands
    assert c1.index("systemctl stop kube-apiserver") < c1.index("systemctl stop etcd")
    assert any(c == "systemctl start --no-block kube-apiserver" for c in c1)
    assert not ran(cluster, "controller-0", "kube-apiserver"), "not running there: left alone"


def test_restore_dry_run_names_the_tool_and_changes_nothing(lab_like, tmp_path) -> None:
    inv, state = lab_like
    cluster, _etcd, snap = snapshot_of(inv, state, tmp_path)
    for n in cluster.nodes.values():
        n.commands.clear()
    proc, _, _ = restore.restore(ctx_for(inv, state, cluster), snap.path, dry_run=True)
    text = proc.describe()
    assert "snapshot restore" in text and "--initial-cluster-token hardway-restore-" in text
    assert "3 keys at revision 9" in text
    assert commands(cluster) == []


# --- the snapshot timer ------------------------------------------------------------------------


def test_the_timer_is_rendered_like_every_unit_and_passes_systemd_analyze(lab_like) -> None:
    inv, state = lab_like
    ctx = Context(inv, state, progress=QUIET)
    planned = schedule.files(ctx, inv.controllers[0], "daily")
    service, timer = (f.data().decode() for f in planned)
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer
    assert "$$(date -u +%%Y%%m%%dT%%H%%M%%SZ)" in service, "systemd's $ and % escaped by the systemd_exec filter"
    schedule.lint(planned)  # raises on any systemd-analyze complaint


@pytest.mark.parametrize("bad", ["", "every full moon", "daily\nExecStart=/bin/evil"])
def test_a_bad_calendar_is_one_line(bad: str) -> None:
    with pytest.raises(HardwayError, match=r"^--schedule: "):
        schedule.check_calendar(bad)


def test_schedule_installs_on_every_controller_and_off_removes_exactly_its_files(lab_like) -> None:
    inv, state = lab_like
    cluster, _ = running(inv)
    ctx = ctx_for(inv, state, cluster)
    schedule.plan(ctx, "*-*-* 03:00").run()
    for c in inv.controllers:
        files = cluster[c.name].files
        assert {schedule.SERVICE, schedule.TIMER} <= set(files)
        record = json.loads(files["/var/lib/hardway/deployed.json"].data)["files"]
        assert record[schedule.TIMER]["chapter"] == "etcd"
        assert any("systemctl enable --now --quiet hardway-etcd-snapshot.timer" in x for x in cluster[c.name].commands)
    schedule.plan(ctx, "off").run()
    for c in inv.controllers:
        files = cluster[c.name].files
        assert schedule.TIMER not in files and schedule.SERVICE not in files
        record = json.loads(files["/var/lib/hardway/deployed.json"].data)["files"]
        assert schedule.TIMER not in record
