"""The remote layer's planning and error paths, over the recording fake (tests/fakes.py).

The same features run against real sshd/systemd in tests/test_bootstrap_etcd.py (lab).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import paramiko
import pytest

from hardway import inventory, remote
from hardway.files import File
from tests.fakes import FakeCluster, FakeFile

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
NODE = INV.controllers[0]


def files() -> list[File]:
    return [
        File("/etc/etcd/ca.crt", 0o644, content=b"ca\n"),
        File("/etc/etcd/etcd.key", 0o600, content=b"secret\n", secret=True),
        File("/etc/systemd/system/etcd.service", 0o644, content=b"[Service]\n", services=("etcd",)),
    ]


def test_install_writes_changed_files_atomically_with_mode_and_owner() -> None:
    cluster = FakeCluster()
    r = cluster.connector(INV, NODE)
    written = remote.install(r, files())
    assert [f.path for f in written] == [f.path for f in files()]
    fs = cluster[NODE.name].files
    key = fs["/etc/etcd/etcd.key"]
    assert (key.data, key.mode, key.owner, key.group) == (b"secret\n", 0o600, "root", "root")
    script = next(c for c in cluster[NODE.name].commands if c.startswith("set -e; install -d"))
    # staged next to the target by `install -m`, then renamed over it: never half a file
    assert "install -m 0600 -o root -g root /tmp/hardway.fake1/1 /etc/etcd/etcd.key.hardway-new" in script
    assert "mv -f /etc/etcd/etcd.key.hardway-new /etc/etcd/etcd.key" in script
    assert not any(p.startswith("/tmp/hardway.fake") for p in fs), "temp dir removed"


def test_install_twice_writes_nothing_the_second_time() -> None:
    cluster = FakeCluster()
    remote.install(cluster.connector(INV, NODE), files())
    cluster[NODE.name].commands.clear()
    cluster[NODE.name].uploads.clear()
    assert remote.install(cluster.connector(INV, NODE), files()) == []
    assert cluster[NODE.name].uploads == []
    assert not any("install -m" in c for c in cluster[NODE.name].commands)


def test_install_rewrites_only_the_changed_file_and_repairs_a_mode() -> None:
    cluster = FakeCluster()
    remote.install(cluster.connector(INV, NODE), files())
    fs = cluster[NODE.name].files
    fs["/etc/etcd/ca.crt"].data = b"tampered\n"
    fs["/etc/etcd/etcd.key"].mode = 0o644  # a world-readable key must be repaired
    cluster[NODE.name].uploads.clear()
    written = remote.install(cluster.connector(INV, NODE), files())
    assert sorted(f.path for f in written) == ["/etc/etcd/ca.crt", "/etc/etcd/etcd.key"]
    assert len(cluster[NODE.name].uploads) == 1  # only the changed content travels
    assert fs["/etc/etcd/ca.crt"].data == b"ca\n"
    assert fs["/etc/etcd/etcd.key"].mode == 0o600


def test_remote_hashes_reports_missing_as_none() -> None:
    cluster = FakeCluster()
    cluster[NODE.name].files["/a"] = FakeFile(b"x")
    got = remote.remote_hashes(cluster.connector(INV, NODE), ["/a", "/b"])
    assert got == {"/a": hashlib.sha256(b"x").hexdigest(), "/b": None}


def test_fan_out_reports_every_node_and_never_stops_at_the_first_failure() -> None:
    cluster = FakeCluster()
    cluster["controller-1"].unreachable = True

    def work(r: remote.Remote) -> str:
        if r.node.name == "controller-2":
            raise remote.RemoteError("controller-2: boom")
        return r.node.name

    outcomes = remote.fan_out(INV, INV.controllers, work, connector=cluster.connector)
    assert [o.node.name for o in outcomes] == ["controller-0", "controller-1", "controller-2"]
    assert outcomes[0].ok and outcomes[0].value == "controller-0"
    assert not outcomes[1].ok and "unreachable" in (outcomes[1].error or "")
    assert outcomes[2].error == "controller-2: boom"


def test_fan_out_turns_unexpected_exceptions_into_outcomes() -> None:
    cluster = FakeCluster()

    def work(r: remote.Remote) -> None:
        raise KeyError("surprise")

    outcomes = remote.fan_out(INV, INV.controllers[:1], work, connector=cluster.connector)
    assert outcomes[0].error == "controller-0: KeyError: 'surprise'"


def test_connection_refuses_unknown_host_keys(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    text = (ROOT / "inventory" / "sample.yaml").read_text().replace(
        "known_hosts: ~/.ssh/known_hosts", f"known_hosts: {known}")
    inv = inventory.parse(text, "x.yaml")
    conn = remote.NodeConnection(inv, inv.controllers[0])
    assert isinstance(conn.client._policy, paramiko.RejectPolicy)


def test_missing_known_hosts_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    text = (ROOT / "inventory" / "sample.yaml").read_text().replace(
        "known_hosts: ~/.ssh/known_hosts", f"known_hosts: {tmp_path / 'nope'}")
    inv = inventory.parse(text, "x.yaml")
    with pytest.raises(remote.RemoteError, match=r"controller-0: known_hosts file .*nope does not exist"):
        remote.NodeConnection(inv, inv.controllers[0])


def test_sudo_wraps_the_whole_command_in_sh_c(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    text = (ROOT / "inventory" / "sample.yaml").read_text().replace(
        "user: root", "user: admin\n  become: sudo").replace("known_hosts: ~/.ssh/known_hosts", f"known_hosts: {known}")
    inv = inventory.parse(text, "x.yaml")
    r = remote.SSHRemote(inv, inv.controllers[0])
    seen: list[str] = []

    class FakeRun:
        exited, stdout, stderr = 0, "/tmp/hardway.x\n", ""

    r.conn.run = lambda cmd, **kw: seen.append(cmd) or FakeRun()  # type: ignore[method-assign]
    r.run("a && b")
    assert seen == ["sudo -n sh -c 'a && b'"]
    # the staging dir belongs to the login user: SFTP uploads as that user, not as root
    assert r.staging_dir() == "/tmp/hardway.x"
    assert seen[-1] == "umask 077 && mktemp -d /tmp/hardway.XXXXXXXX"


class LocalShell:
    """Runs commands in a real local /bin/sh, to test script building and parsing end to end."""

    node = NODE

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> remote.Result:
        import subprocess

        p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        return remote.Result(command, p.returncode, p.stdout, p.stderr)


def test_run_sections_separates_outputs_and_exit_codes_in_one_exec() -> None:
    out = remote.run_sections(LocalShell(), {  # type: ignore[arg-type]
        "plain": "echo one; echo two",
        "no-newline": "printf abc",  # must not swallow the next marker
        "stderr": "echo oops >&2; exit 3",
        "compound": "x=1; if [ $x = 1 ]; then echo yes; fi",
        "empty": "true",
    })
    assert out["plain"].stdout == "one\ntwo\n" and out["plain"].ok
    assert out["no-newline"].stdout == "abc"
    assert (out["stderr"].stdout, out["stderr"].exit_code) == ("oops\n", 3)
    assert out["compound"].stdout == "yes\n"
    assert out["empty"].stdout == "" and out["empty"].ok


def test_a_file_never_shows_its_content_in_a_repr() -> None:
    secret = File("/etc/etcd/etcd.key", 0o600, content=b"-----BEGIN PRIVATE KEY-----", secret=True)
    assert "PRIVATE" not in repr(secret) and "PRIVATE" not in str([secret])
