"""The transport: fan-out, strict host keys, sudo wrapping, one round trip for many facts.

The same features run against real sshd/systemd in tests/test_bootstrap_etcd.py (lab).
"""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from hardway import inventory, remote
from hardway.facts import Fact, FactOutput, gather
from hardway.files import File
from tests.fakes import FakeCluster

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
NODE = INV.controllers[0]


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


class LocalShell:
    """Runs commands in a real local /bin/sh, to test script building and parsing end to end."""

    node = NODE

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> remote.CommandResult:
        import subprocess

        p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        return remote.CommandResult(command, p.returncode, p.stdout, p.stderr)

    gather = remote.SSHRemote.gather  # the real one: sections_script over run, then parse_sections


def test_one_gather_separates_outputs_and_exit_codes_in_one_exec() -> None:
    shell = LocalShell()
    calls: list[str] = []
    run = shell.run
    shell.run = lambda command, **kw: calls.append(command) or run(command, **kw)  # type: ignore[method-assign]
    facts = {name: Fact(name, cmd, lambda out: out) for name, cmd in {
        "plain": "echo one; echo two",
        "no-newline": "printf abc",  # must not swallow the next marker
        "stderr": "echo oops >&2; exit 3",
        "compound": "x=1; if [ $x = 1 ]; then echo yes; fi",
        "empty": "true",
    }.items()}
    out = gather(shell, facts.values())
    assert len(calls) == 1, "one round trip for every fact"
    assert out["plain"].stdout == "one\ntwo\n" and out["plain"].ok
    assert out["no-newline"].stdout == "abc"
    assert (out["stderr"].stdout, out["stderr"].exit_code) == ("oops\n", 3)
    assert out["compound"].stdout == "yes\n"
    assert out["empty"].stdout == "" and out["empty"].ok


def test_a_parallel_gather_runs_alone_facts_after_the_rest_in_the_same_exec(tmp_path: Path) -> None:
    shell = LocalShell()
    calls: list[str] = []
    run = shell.run
    shell.run = lambda command, **kw: calls.append(command) or run(command, **kw)  # type: ignore[method-assign]
    flag = tmp_path / "slow-one-finished"
    slow = Fact("slow", f"sleep 0.3; touch {flag}; echo slow", lambda out: out)
    both = [slow, Fact("quick", "echo quick", lambda out: out)]
    probe = Fact("probe", f"test -e {flag} && echo after-the-rest", lambda out: out, alone=True)
    out = gather(shell, [*both, probe], parallel=True)
    assert len(calls) == 1, "one round trip"
    assert out[probe] == FactOutput("after-the-rest\n", 0), "the alone fact ran once the others had finished"
    assert out[slow].stdout == "slow\n" and out["quick"].stdout == "quick\n"
    flag.unlink()
    started_at_once = Fact("probe", probe.shell, probe.parse)  # the same probe, not alone: runs with the rest
    assert not gather(shell, [*both, started_at_once], parallel=True)[started_at_once].ok


def test_a_gather_cut_short_marks_the_unanswered_facts() -> None:
    out = remote.parse_sections("@@hardway-section@@ a\nhalf", ["a", "b"])
    assert out["a"] == FactOutput("half", 255) and out["b"] == FactOutput("", 255)


def test_a_file_never_shows_its_content_in_a_repr() -> None:
    secret = File("/etc/etcd/etcd.key", 0o600, content=b"-----BEGIN PRIVATE KEY-----", secret=True)
    assert "PRIVATE" not in repr(secret) and "PRIVATE" not in str([secret])
