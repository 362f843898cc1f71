"""Pushing files and the deployment record, over the fact-level fake; the lab tests run the real thing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hardway import deploy, inventory
from hardway.errors import HardwayError
from hardway.files import File
from tests.fakes import FakeCluster, FakeFile

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
NODE = INV.controllers[0]


def files() -> list[File]:
    return [
        File("/etc/etcd/ca.crt", 0o644, content=b"ca\n", chapter="etcd"),
        File("/etc/etcd/etcd.key", 0o600, content=b"secret\n", secret=True, chapter="etcd"),
        File("/etc/systemd/system/etcd.service", 0o644, content=b"[Service]\n", services=("etcd",), chapter="etcd"),
    ]


def record(cluster: FakeCluster) -> dict:
    return json.loads(cluster[NODE.name].files[deploy.RECORD].data)["files"]


def test_install_writes_changed_files_atomically_with_mode_owner_and_record() -> None:
    cluster = FakeCluster()
    report = deploy.install(cluster.connector(INV, NODE), files())
    assert report.written == [f.path for f in files()]
    fs = cluster[NODE.name].files
    key = fs["/etc/etcd/etcd.key"]
    assert (key.data, key.mode, key.owner, key.group) == (b"secret\n", 0o600, "root", "root")
    (script,) = [c for c in cluster[NODE.name].commands if c.startswith("set -e;")]  # one exec does it all
    staging = cluster[NODE.name].uploads[0].rsplit("/", 1)[0]
    assert staging.startswith(f"{deploy.STAGING}/run-"), "staging lives under hardway's own dir"
    # staged next to the target by `install -m`, then renamed over it: never half a file
    assert (f"chown root:root {staging}/1; chmod 0600 {staging}/1; mv {staging}/1 /etc/etcd/etcd.key.hardway-new; "
            "mv -f /etc/etcd/etcd.key.hardway-new /etc/etcd/etcd.key") in script
    assert not any(p.startswith(deploy.STAGING) for p in fs), "staging dir removed"
    assert record(cluster)["/etc/etcd/etcd.key"] == {
        "sha256": files()[1].sha256, "mode": "0600", "owner": "root", "group": "root", "chapter": "etcd"}
    assert fs[deploy.RECORD].mode == 0o600


def test_the_staging_dir_is_private_and_the_secret_travels_last() -> None:
    cluster = FakeCluster()
    deploy.install(cluster.connector(INV, NODE), files())
    (script,) = [c for c in cluster[NODE.name].commands if c.startswith("set -e;")]
    staging = cluster[NODE.name].uploads[0].rsplit("/", 1)[0]
    steps = script.split("; ")
    # nothing unpacked there is ever readable by others, and it goes away even when a step fails
    unpack = steps.index(f"tar -x --no-same-owner -C {staging}")
    assert steps.index("umask 077") < steps.index(f"mkdir {staging}") < unpack
    assert f"trap 'rm -rf -- {staging}' EXIT" in steps
    uploads = cluster[NODE.name].uploads
    assert uploads[-2].endswith("/1"), "the key is the last file in the stream (the record after it)"
    assert uploads[-1].endswith("/record")


def test_install_twice_writes_nothing_the_second_time() -> None:
    cluster = FakeCluster()
    deploy.install(cluster.connector(INV, NODE), files())
    cluster[NODE.name].commands.clear()
    cluster[NODE.name].uploads.clear()
    assert deploy.install(cluster.connector(INV, NODE), files()).written == []
    assert cluster[NODE.name].uploads == []
    assert cluster[NODE.name].commands == [], "nothing to do: not even a command"


def test_install_rewrites_only_the_changed_file_and_repairs_a_mode() -> None:
    cluster = FakeCluster()
    deploy.install(cluster.connector(INV, NODE), files())
    fs = cluster[NODE.name].files
    fs["/etc/etcd/ca.crt"].data = b"tampered\n"
    fs["/etc/etcd/etcd.key"].mode = 0o644  # a world-readable key must be repaired
    cluster[NODE.name].uploads.clear()
    report = deploy.install(cluster.connector(INV, NODE), files())
    assert report.written == ["/etc/etcd/ca.crt"] and report.fixed == ["/etc/etcd/etcd.key"]
    assert [u.rsplit("/", 1)[1] for u in cluster[NODE.name].uploads] == ["0", "record"], "only what changed"
    assert fs["/etc/etcd/ca.crt"].data == b"ca\n"
    assert fs["/etc/etcd/etcd.key"].mode == 0o600


def test_a_file_hardway_did_not_deploy_is_refused_naming_node_and_path() -> None:
    """The Debian package's containerd config sits where the workers chapter plans its own."""
    cluster = FakeCluster()
    worker = INV.workers[0]
    debian = FakeFile(b"# Debian's containerd config\n", mtime=5)
    cluster[worker.name].files["/etc/containerd/config.toml"] = debian
    ours = [File("/etc/containerd/config.toml", 0o644, content=b"version = 3\n", services=("containerd",),
                 chapter="workers")]
    with pytest.raises(HardwayError) as err:
        deploy.install(cluster.connector(INV, worker), ours)
    assert str(err.value).startswith("worker-0: /etc/containerd/config.toml exists and was not deployed by hardway")
    assert "--adopt" in str(err.value)
    assert cluster[worker.name].files["/etc/containerd/config.toml"] is debian
    assert not any(c.startswith("set -e") for c in cluster[worker.name].commands), "nothing was run"


def test_adopt_replaces_a_foreign_file_keeping_the_original() -> None:
    cluster = FakeCluster()
    worker = INV.workers[0]
    cluster[worker.name].files["/etc/containerd/config.toml"] = FakeFile(b"# Debian's\n")
    ours = [File("/etc/containerd/config.toml", 0o644, content=b"version = 3\n", chapter="workers")]
    deploy.install(cluster.connector(INV, worker), ours, adopt=True)
    fs = cluster[worker.name].files
    assert fs["/etc/containerd/config.toml"].data == b"version = 3\n"
    (backup,) = [p for p in fs if p.startswith("/etc/containerd/config.toml.hardway-orig-")]
    assert fs[backup].data == b"# Debian's\n"


def test_a_file_already_holding_the_planned_bytes_is_recorded_not_rewritten() -> None:
    cluster = FakeCluster()
    cluster[NODE.name].files["/etc/etcd/ca.crt"] = FakeFile(b"ca\n", mtime=7)
    report = deploy.install(cluster.connector(INV, NODE), files()[:1])
    assert report.written == [] and cluster[NODE.name].files["/etc/etcd/ca.crt"].mtime == 7
    assert "/etc/etcd/ca.crt" in record(cluster)


def test_a_broken_record_is_one_line_whose_fix_works_as_printed() -> None:
    cluster = FakeCluster()
    deploy.install(cluster.connector(INV, NODE), files())
    cluster[NODE.name].files[deploy.RECORD] = FakeFile(b"{not json")
    with pytest.raises(HardwayError, match=r"controller-0: .*deployed.json is not hardway's deployment record; "
                                           r"move it aside \(`mv /var/lib/hardway/deployed.json") as err:
        deploy.install(cluster.connector(INV, NODE), files())
    fix = str(err.value).split("`")[1]
    cluster[NODE.name].on(r"^mv /var/lib/hardway/deployed.json ", lambda c: cluster[NODE.name].files.update(
        {c.split()[2]: cluster[NODE.name].files.pop(c.split()[1])}))
    cluster.connector(INV, NODE).run(fix)
    assert deploy.install(cluster.connector(INV, NODE), files()).written == []
    assert set(record(cluster)) == {f.path for f in files()}, "the unchanged files are recorded again"


def test_staging_left_by_killed_runs_is_swept_by_name_and_age() -> None:
    now = time.time()
    mine_dead = f"run-{deploy._HOST}-999999-{int(now)}-0123abcd"
    mine_alive = f"run-{deploy._HOST}-1234-{int(now)}-0123abcd"
    other_recent = f"run-otherbox-55-{int(now) - 60}-0123abcd"
    other_old = f"run-otherbox-55-{int(now) - 2 * 86400}-0123abcd"
    names = [mine_dead, mine_alive, other_recent, other_old, "not-ours", "run-x"]
    swept = deploy.sweepable(names, now=now, alive=lambda pid: pid == 1234)
    assert swept == [mine_dead, other_old]


def test_install_sweeps_what_a_killed_run_left() -> None:
    cluster = FakeCluster()
    left = f"{deploy.STAGING}/run-{deploy._HOST}-999999-{int(time.time())}-0123abcd"
    cluster[NODE.name].dirs.add(left)
    cluster[NODE.name].files[f"{left}/3"] = FakeFile(b"half a key", 0o600)
    deploy.install(cluster.connector(INV, NODE), files())
    assert not any(p.startswith(left) for p in cluster[NODE.name].files)
