"""The transport: the only module that opens connections to hosts.

- ``NodeConnection``: a Fabric Connection that checks host keys against the inventory's
  known_hosts and refuses unknown or changed ones (Fabric auto-adds them by default).
- ``Remote``: what the rest of hardway may do to a node: ``run`` a command, ``gather`` many
  read-only facts in one round trip, ``upload`` bytes. Over SSH here; tests plug in a fake that
  answers facts by name (tests/fakes.py, after httpx's MockTransport).
- ``fan_out``: one function per node in parallel; every node's outcome, one failing never stops
  the others. ``Pool``: one connection per node for the length of a task.
"""

from __future__ import annotations

import io
import shlex
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Generic, Protocol, TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput
from hardway.inventory import Inventory, Node

T = TypeVar("T")


class RemoteError(HardwayError):
    """A node could not be reached or a command on it failed; names the node."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Remote(Protocol):
    """What the rest of hardway may do to a node."""

    node: Node

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> CommandResult: ...

    def gather(self, facts: Sequence[Fact], timeout: int | None = None, *, parallel: bool = False,
               ) -> dict[str, FactOutput]:
        """Raw output of every fact (keyed by ``Fact.key``), in one round trip; ``parallel``: the facts'
        commands run at the same time on the node (for client calls that each wait on the network)."""
        ...

    def feed(self, command: str, write: Callable[[BinaryIO], None], *, timeout: int | None = None) -> CommandResult:
        """Run ``command`` with ``write``'s bytes as its stdin (a stream: nothing is held in memory);
        raises RemoteError when it fails. How pushes travel: one exec per node carries every file."""
        ...

    def fetch(self, command: str, sink: Callable[[bytes], None], *, timeout: int | None = None) -> CommandResult:
        """Run ``command`` and hand its stdout, as bytes, to ``sink`` piece by piece (a snapshot can be
        large: nothing is held in memory); raises RemoteError when it fails."""
        ...

    def close(self) -> None: ...


class NodeConnection(Connection):
    """A Fabric Connection with strict host-key checking against one known_hosts file."""

    def __init__(self, inv: Inventory, node: Node) -> None:
        ssh = inv.ssh
        connect_kwargs: dict[str, object] = {"banner_timeout": ssh.connect_timeout,
                                             "auth_timeout": ssh.connect_timeout}
        if ssh.key is not None:
            connect_kwargs.update(key_filename=str(ssh.key), look_for_keys=False, allow_agent=False)
        super().__init__(
            host=str(node.address), user=ssh.user, port=ssh.port,
            connect_timeout=ssh.connect_timeout, connect_kwargs=connect_kwargs,
            # An explicit empty ssh_config: the inventory alone decides user, port and key.
            config=Config(lazy=True, ssh_config=paramiko.SSHConfig()),
        )
        if not ssh.known_hosts.is_file():
            raise RemoteError(
                f"{node.name}: known_hosts file {ssh.known_hosts} does not exist; record the nodes' "
                f"host keys there (e.g. ssh-keyscan -p {ssh.port} ADDRESS >> {ssh.known_hosts}, after "
                "checking the fingerprints)"
            )
        # Fabric hard-codes AutoAddPolicy; a node we have not recorded must be refused, not trusted.
        self.client.load_host_keys(str(ssh.known_hosts))
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())


# Sections of one gather are told apart by this marker line (see run_sections).
_MARK = "@@hardway-section@@"


def sections_script(sections: dict[str, str]) -> str:
    """One shell script running every section in a subshell, each followed by its exit code.

    A section's ``exit`` ends only itself. The rc marker starts with a newline so output without a
    final newline cannot swallow it; the parser takes it back off.
    """
    return "; ".join(f"echo '{_MARK} {key}'; ( {cmd.rstrip('; ')}\n) 2>&1; printf '\\n{_MARK} rc %d\\n' $?"
                     for key, cmd in sections.items())


def parallel_sections_script(sections: dict[str, str], alone: Sequence[str] = ()) -> str:
    """``sections_script``, but every section runs at once, each into its own file in a private temp
    dir; the outputs are then printed in order with the same markers (so one parser reads both).
    For commands that mostly wait (etcdctl: a process start and a TLS handshake each). The sections
    named in ``alone`` (measurements that other work would disturb: the fsync probe) run after the
    others have finished, one at a time, still in this one exec."""
    def save(i: int, cmd: str) -> str:
        return f"( {cmd.rstrip('; ')}\n) >\"$d/{i}\" 2>&1; echo $? >\"$d/{i}.rc\""

    run = [f"{{ {save(i, cmd)}; }} &" for i, (key, cmd) in enumerate(sections.items()) if key not in alone]
    after = [save(i, cmd) for i, (key, cmd) in enumerate(sections.items()) if key in alone]
    show = [f"echo '{_MARK} {key}'; cat \"$d/{i}\"; printf '\\n{_MARK} rc %d\\n' \"$(cat \"$d/{i}.rc\")\""
            for i, key in enumerate(sections)]
    return "\n".join(["d=$(mktemp -d)", "trap 'rm -rf \"$d\"' EXIT", *run, "wait", *after, *show])


def parse_sections(out: str, keys: Sequence[str]) -> dict[str, FactOutput]:
    results: dict[str, FactOutput] = {}
    key, buf = None, []
    for line in out.splitlines(keepends=True):
        if line.startswith(_MARK):
            word = line[len(_MARK):].split()
            if word and word[0] == "rc" and key is not None:
                results[key] = FactOutput("".join(buf).removesuffix("\n"), int(word[1]) if len(word) > 1 else 1)
                key, buf = None, []
            elif word:
                key, buf = word[0], []
        elif key is not None:
            buf.append(line)
    for missing in set(keys) - results.keys():  # cut off (timeout, lost connection)
        results[missing] = FactOutput("".join(buf) if missing == key else "", 255)
    return results


class SSHRemote:
    """A node over SSH. As root, or via passwordless sudo (each command wrapped in ``sh -c``)."""

    def __init__(self, inv: Inventory, node: Node) -> None:
        self.node = node
        self.inv = inv
        self.conn = NodeConnection(inv, node)
        self._sudo = inv.ssh.become == "sudo"

    def open(self) -> SSHRemote:
        ssh = self.inv.ssh
        where = f"{self.node.name} ({self.node.address}:{ssh.port})"
        try:
            self.conn.open()
        except paramiko.BadHostKeyException:
            raise RemoteError(
                f"{where}: host key differs from the one in {ssh.known_hosts}; if the node was "
                "reinstalled, verify the new fingerprint and replace its line there"
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise RemoteError(
                    f"{where}: host key not in {ssh.known_hosts}; record it deliberately "
                    f"(ssh-keyscan -p {ssh.port} {self.node.address}, compare the fingerprint) — unknown "
                    "hosts are refused"
                ) from None
            raise RemoteError(f"{where}: SSH failed: {exc}") from None
        except TimeoutError:
            raise RemoteError(f"{where}: unreachable (no answer within {ssh.connect_timeout}s)") from None
        except OSError as exc:
            raise RemoteError(f"{where}: unreachable ({exc.strerror or exc})") from None
        return self

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> CommandResult:
        wrapped = f"sudo -n sh -c {shlex.quote(command)}" if self._sudo else command
        limit = timeout or self.inv.ssh.command_timeout
        try:
            r = self.conn.run(wrapped, hide=True, warn=True, in_stream=False, timeout=limit)
        except CommandTimedOut:
            raise RemoteError(f"{self.node.name}: command timed out after {limit}s: {command[:200]}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.node.name}: connection lost running {command[:200]!r}: {exc}") from None
        result = CommandResult(command=command, exit_code=r.exited, stdout=r.stdout, stderr=r.stderr)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise RemoteError(
                f"{self.node.name}: `{command[:200]}` exited {result.exit_code}: {detail[-1] if detail else ''}"
            )
        return result

    def gather(self, facts: Sequence[Fact], timeout: int | None = None, *, parallel: bool = False,
               ) -> dict[str, FactOutput]:
        # Every exec is a round trip and a session on the node: facts travel together.
        sections = {f.key: f.shell for f in facts}
        alone = [f.key for f in facts if f.alone]
        script = parallel_sections_script(sections, alone) if parallel else sections_script(sections)
        out = self.run(script, check=False, timeout=timeout).stdout
        return parse_sections(out, list(sections))

    def feed(self, command: str, write: Callable[[BinaryIO], None], *, timeout: int | None = None) -> CommandResult:
        # A raw exec channel, not SFTP: SFTP acknowledges every 32 KiB request, which measured here
        # at half the throughput of a plain stream (bench/bootstrap_etcd.py prints the rate).
        def talk(channel: paramiko.Channel) -> str:
            try:
                # tarfile writes 10 KiB at a time; a sendall per MiB instead keeps the stream fast
                with io.BufferedWriter(_ChannelWriter(channel), buffer_size=1 << 20) as stdin:
                    write(stdin)  # type: ignore[arg-type]
                channel.shutdown_write()
            except OSError:
                pass  # the command ended early (it failed): its exit status and stderr say why
            return channel.makefile("rb").read().decode(errors="replace")

        return self._stream(command, timeout, talk)

    def fetch(self, command: str, sink: Callable[[bytes], None], *, timeout: int | None = None) -> CommandResult:
        def talk(channel: paramiko.Channel) -> str:
            while chunk := channel.recv(1 << 20):
                sink(chunk)
            return ""

        return self._stream(command, timeout, talk)

    def _stream(self, command: str, timeout: int | None, talk: Callable[[paramiko.Channel], str]) -> CommandResult:
        """Run ``command`` on a channel of its own; ``talk`` moves the data and returns stdout."""
        wrapped = f"sudo -n sh -c {shlex.quote(command)}" if self._sudo else command
        limit = timeout or self.inv.ssh.command_timeout
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"{self.node.name}: connection closed")
        channel = None
        try:
            channel = transport.open_session(timeout=limit)
            channel.settimeout(limit)
            channel.exec_command(wrapped)
            stdout = talk(channel)
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            code = channel.recv_exit_status()
        except TimeoutError:
            raise RemoteError(f"{self.node.name}: command timed out after {limit}s: {command[:200]}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.node.name}: connection lost running {command[:200]!r}: {exc}") from None
        finally:
            if channel is not None:
                channel.close()
        result = CommandResult(command, code, stdout, stderr)
        if not result.ok:
            detail = (stderr.strip() or stdout.strip()).splitlines()
            raise RemoteError(f"{self.node.name}: `{command[:200]}` exited {code}: {detail[-1] if detail else ''}")
        return result

    def close(self) -> None:
        self.conn.close()


class _ChannelWriter(io.RawIOBase):
    """A write-only file over an SSH channel's stdin (what tarfile writes into)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._channel.sendall(data)
        return len(data)

    def close(self) -> None:  # the channel is closed by its owner, after shutdown_write
        pass


def connect(inv: Inventory, node: Node) -> Remote:
    return SSHRemote(inv, node).open()


Connector = Callable[[Inventory, Node], Remote]


class _Borrowed:
    """A pooled Remote whose close() returns it to the pool instead of closing it."""

    def __init__(self, inner: Remote) -> None:
        self._inner = inner
        self.node = inner.node

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> CommandResult:
        return self._inner.run(command, check=check, timeout=timeout)

    def gather(self, facts: Sequence[Fact], timeout: int | None = None, *, parallel: bool = False,
               ) -> dict[str, FactOutput]:
        return self._inner.gather(facts, timeout=timeout, parallel=parallel)

    def feed(self, command: str, write: Callable[[BinaryIO], None], *, timeout: int | None = None) -> CommandResult:
        return self._inner.feed(command, write, timeout=timeout)

    def fetch(self, command: str, sink: Callable[[bytes], None], *, timeout: int | None = None) -> CommandResult:
        return self._inner.fetch(command, sink, timeout=timeout)

    def close(self) -> None:
        pass


class Pool:
    """A Connector that keeps one connection per node for the length of a task.

    fan_out gives each node its own thread, so a pooled connection is never shared between threads.
    """

    def __init__(self, connector: Connector = connect) -> None:
        self._connector = connector
        self._open: dict[str, Remote] = {}
        self._lock = threading.Lock()

    def __call__(self, inv: Inventory, node: Node) -> Remote:
        with self._lock:
            existing = self._open.get(node.name)
        if existing is None:
            existing = self._connector(inv, node)
            with self._lock:
                self._open[node.name] = existing
        return _Borrowed(existing)

    def close(self) -> None:
        with self._lock:
            remotes, self._open = list(self._open.values()), {}
        for r in remotes:
            r.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- parallel fan-out ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeOutcome(Generic[T]):
    node: Node
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def fan_out(
    inv: Inventory,
    nodes: Sequence[Node],
    work: Callable[[Remote], T],
    *,
    connector: Connector = connect,
) -> list[NodeOutcome[T]]:
    """Run ``work`` on every node at once (one connection per node and thread); return each outcome.

    A node that cannot be reached, or whose work raises, yields an outcome with ``error`` set
    (starting with the node's name); the others carry on. Order follows ``nodes``.
    """

    def one(node: Node) -> NodeOutcome[T]:
        remote = None
        try:
            remote = connector(inv, node)
            return NodeOutcome(node=node, value=work(remote))
        except HardwayError as exc:
            msg = str(exc)
            return NodeOutcome(node=node, error=msg if msg.startswith(node.name) else f"{node.name}: {msg}")
        except Exception as exc:  # a bug or an unexpected library error: still report every node
            return NodeOutcome(node=node, error=f"{node.name}: {type(exc).__name__}: {exc}")
        finally:
            if remote is not None:
                remote.close()

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        return list(pool.map(one, nodes))


def first_error(outcomes: Sequence[NodeOutcome[T]]) -> str | None:
    """The first failed node's error, with a count of the others."""
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more node(s))" if len(bad) > 1 else ""
    return f"{bad[0].error}{more}"


class Progress:
    """Thread-safe per-node progress lines, e.g. ``[controller-1] start etcd``."""

    def __init__(self, sink: Callable[[str], None] = print) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def __call__(self, node: Node | str, message: str) -> None:
        line = f"[{getattr(node, 'name', node)}] {message}"
        with self._lock:
            self._sink(line)


QUIET = Progress(sink=lambda _line: None)
