"""The remote layer: the only module that touches hosts.

- ``NodeConnection``: a Fabric Connection that checks host keys against the inventory's
  known_hosts and refuses unknown or changed ones (Fabric auto-adds them by default).
- ``Remote``: what apply and verify need from a node (run, read, install files, systemd), over
  SSH here and over a recording fake in unit tests (tests/fakes.py).
- ``fan_out``: run one function per node in parallel and return every node's outcome; one
  node failing never stops the others.
"""

from __future__ import annotations

import io
import shlex
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node

T = TypeVar("T")


class RemoteError(HardwayError):
    """A node could not be reached or a command on it failed; names the node."""


@dataclass(frozen=True)
class Result:
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

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> Result: ...

    def upload(self, data: bytes, remote_path: str) -> None: ...

    def staging_dir(self) -> str:
        """A fresh private (0700) directory that upload() can write into."""
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

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> Result:
        wrapped = f"sudo -n sh -c {shlex.quote(command)}" if self._sudo else command
        limit = timeout or self.inv.ssh.command_timeout
        try:
            r = self.conn.run(wrapped, hide=True, warn=True, in_stream=False, timeout=limit)
        except CommandTimedOut:
            raise RemoteError(f"{self.node.name}: command timed out after {limit}s: {command}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.node.name}: connection lost running {command!r}: {exc}") from None
        result = Result(command=command, exit_code=r.exited, stdout=r.stdout, stderr=r.stderr)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise RemoteError(
                f"{self.node.name}: `{command}` exited {result.exit_code}: {detail[-1] if detail else ''}"
            )
        return result

    def upload(self, data: bytes, remote_path: str) -> None:
        # SFTP lands the file 0644 as the login user: callers upload into a private (0700) temp
        # dir and move it into place with `install`, which sets mode and owner.
        try:
            self.conn.put(io.BytesIO(data), remote=remote_path)
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.node.name}: upload to {remote_path} failed: {exc}") from None

    def staging_dir(self) -> str:
        # Made by the login user, never through sudo: SFTP uploads as that user, and a root-owned
        # 0700 dir would refuse it. install (run as root) can still read from it.
        try:
            r = self.conn.run("umask 077 && mktemp -d /tmp/hardway.XXXXXXXX", hide=True, warn=True,
                              in_stream=False, timeout=self.inv.ssh.command_timeout)
        except (CommandTimedOut, OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.node.name}: cannot make a staging dir in /tmp: {exc}") from None
        if r.exited != 0:
            raise RemoteError(f"{self.node.name}: cannot make a staging dir in /tmp: {r.stderr.strip()}")
        return r.stdout.strip()

    def close(self) -> None:
        self.conn.close()


def connect(inv: Inventory, node: Node) -> Remote:
    return SSHRemote(inv, node).open()


Connector = Callable[[Inventory, Node], Remote]


class _Borrowed:
    """A pooled Remote whose close() returns it to the pool instead of closing it."""

    def __init__(self, inner: Remote) -> None:
        self._inner = inner
        self.node = inner.node

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> Result:
        return self._inner.run(command, check=check, timeout=timeout)

    def upload(self, data: bytes, remote_path: str) -> None:
        self._inner.upload(data, remote_path)

    def staging_dir(self) -> str:
        return self._inner.staging_dir()

    def close(self) -> None:
        pass


class Pool:
    """A Connector that keeps one connection per node for the length of a task.

    A login costs ~0.5 s; bootstrap's phases (preflight, push, start, wait, verify) reuse it.
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
class Outcome(Generic[T]):
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
) -> list[Outcome[T]]:
    """Run ``work`` on every node at once (one connection per node and thread); return each outcome.

    A node that cannot be reached, or whose work raises, yields an Outcome with ``error`` set;
    the others carry on. Order follows ``nodes``.
    """

    def one(node: Node) -> Outcome[T]:
        remote = None
        try:
            remote = connector(inv, node)
            return Outcome(node=node, value=work(remote))
        except HardwayError as exc:
            msg = str(exc)
            return Outcome(node=node, error=msg if msg.startswith(node.name) else f"{node.name}: {msg}")
        except Exception as exc:  # a bug or an unexpected library error: still report every node
            return Outcome(node=node, error=f"{node.name}: {type(exc).__name__}: {exc}")
        finally:
            if remote is not None:
                remote.close()

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        return list(pool.map(one, nodes))


class Progress:
    """Thread-safe per-node progress lines, e.g. ``[controller-1] start etcd``."""

    def __init__(self, sink: Callable[[str], None] = print) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def __call__(self, node: Node | str, message: str) -> None:
        line = f"[{getattr(node, 'name', node)}] {message}"
        with self._lock:
            self._sink(line)


# --- files -----------------------------------------------------------------------------------


def hashes_command(paths: Sequence[str]) -> str:
    return "sha256sum -- " + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null; true"


def parse_hashes(out: str, paths: Iterable[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = dict.fromkeys(paths)
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        if name in found:
            found[name] = digest
    return found


def modes_command(paths: Sequence[str]) -> str:
    return "stat -c '%a %U %G %n' -- " + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null; true"


def parse_modes(out: str, paths: Iterable[str]) -> dict[str, tuple[int, str, str] | None]:
    found: dict[str, tuple[int, str, str] | None] = dict.fromkeys(paths)
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[3] in found:
            found[parts[3]] = (int(parts[0], 8), parts[1], parts[2])
    return found


def remote_hashes(remote: Remote, paths: Iterable[str]) -> dict[str, str | None]:
    """sha256 of each path on the node (None where missing), in one command."""
    paths = list(paths)
    return parse_hashes(remote.run(hashes_command(paths)).stdout, paths) if paths else {}


def remote_modes(remote: Remote, paths: Iterable[str]) -> dict[str, tuple[int, str, str] | None]:
    """(mode, owner, group) of each path on the node, None where missing."""
    paths = list(paths)
    return parse_modes(remote.run(modes_command(paths)).stdout, paths) if paths else {}


_MARK = "@@hardway-section@@"


def run_sections(remote: Remote, sections: dict[str, str], timeout: int | None = None) -> dict[str, Result]:
    """Run several read-only commands in ONE remote exec; each section's output (stderr merged) and code.

    Every exec costs a login session on the node (~0.2 s with PAM/logind), so facts are gathered
    in one round trip per node instead of one per question.
    """
    # Each section runs in a subshell so its `exit` ends only itself. The rc marker starts with a
    # newline so output without a final newline cannot swallow it; the parser takes it back off.
    script = "; ".join(f"echo '{_MARK} {name}'; ( {cmd.rstrip('; ')}\n) 2>&1; printf '\\n{_MARK} rc %d\\n' $?"
                       for name, cmd in sections.items())
    out = remote.run(script, check=False, timeout=timeout).stdout
    results: dict[str, Result] = {}
    name, buf = None, []
    for line in out.splitlines(keepends=True):
        if line.startswith(_MARK):
            word = line[len(_MARK):].split()
            if word and word[0] == "rc" and name is not None:
                text = "".join(buf).removesuffix("\n")
                results[name] = Result(sections[name], int(word[1]) if len(word) > 1 else 1, text, "")
                name, buf = None, []
            elif word:
                name, buf = word[0], []
        elif name is not None:
            buf.append(line)
    for missing in sections.keys() - results.keys():
        results[missing] = Result(sections[missing], 255, "".join(buf) if missing == name else "", "cut off")
    return results


def install(remote: Remote, files: Sequence[File]) -> list[File]:
    """Write the files whose sha256 differs on the node, atomically; return those written.

    Each changed file is uploaded to a private temp dir, then ``install -m -o -g`` puts it next to
    its target and ``mv`` renames it over the target, so a reader never sees half a file. Files
    whose content matches but whose mode/owner drifted are fixed in place with chmod/chown.
    """
    hashes = remote_hashes(remote, (f.path for f in files))
    changed = [f for f in files if hashes.get(f.path) != f.sha256]
    modes = remote_modes(remote, (f.path for f in files if f not in changed))
    fix_modes = [f for f in files if f not in changed and modes.get(f.path) != (f.mode, f.owner, f.group)]
    script: list[str] = []
    if changed:
        tmp = remote.staging_dir()
        try:
            for i, f in enumerate(changed):
                remote.upload(f.data(), f"{tmp}/{i}")
            dirs = sorted({f.path.rsplit("/", 1)[0] or "/" for f in changed})
            script.append("install -d -m 0755 -- " + " ".join(shlex.quote(d) for d in dirs))
            for i, f in enumerate(changed):
                staged = shlex.quote(f"{f.path}.hardway-new")
                script.append(
                    f"install -m {f.mode:04o} -o {shlex.quote(f.owner)} -g {shlex.quote(f.group)} "
                    f"{tmp}/{i} {staged}"
                )
                script.append(f"mv -f {staged} {shlex.quote(f.path)}")
            remote.run("set -e; " + "; ".join(script))
        finally:
            remote.run(f"rm -rf {shlex.quote(tmp)}", check=False)
    if fix_modes:
        remote.run("set -e; " + "; ".join(
            f"chown {shlex.quote(f.owner)}:{shlex.quote(f.group)} {shlex.quote(f.path)}; "
            f"chmod {f.mode:04o} {shlex.quote(f.path)}" for f in fix_modes))
    return changed + fix_modes


# --- systemd ---------------------------------------------------------------------------------


def systemctl(remote: Remote, verb: str, *units: str, check: bool = True, timeout: int | None = None) -> Result:
    return remote.run(" ".join(["systemctl", verb, *map(shlex.quote, units)]), check=check, timeout=timeout)


def unit_state(remote: Remote, unit: str) -> str:
    """`systemctl is-active` of a unit: active, inactive, failed, activating, ..."""
    return systemctl(remote, "is-active", unit, check=False).stdout.strip() or "unknown"


def service_states(remote: Remote, services: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """(ActiveState, ActiveEnterTimestamp in epoch seconds) of each service, in one command."""
    if not services:
        return {}
    out = remote.run("systemctl show --timestamp=unix -p Id,ActiveState,ActiveEnterTimestamp -- "
                     + " ".join(shlex.quote(f"{s}.service") for s in services), check=False).stdout
    states: dict[str, tuple[str, int | None]] = {s: ("unknown", None) for s in services}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = props.get("Id", "").removesuffix(".service")
        stamp = props.get("ActiveEnterTimestamp", "").lstrip("@")
        if name in states:
            states[name] = (props.get("ActiveState", "unknown"), int(stamp) if stamp.isdigit() else None)
    return states


def stale_services(remote: Remote, files: Sequence[File]) -> set[str]:
    """Active services started before one of their files last changed on the node.

    This is what makes an interrupted push converge: a re-run writes nothing new, yet still
    restarts a service that never picked up the files an earlier run installed.
    """
    services = sorted({s for f in files for s in f.services})
    if not services:
        return set()
    paths = [f.path for f in files if f.services]
    mtimes: dict[str, int] = {}
    for line in remote.run("stat -c '%Y %n' -- " + " ".join(shlex.quote(p) for p in paths)
                           + " 2>/dev/null; true").stdout.splitlines():
        stamp, _, name = line.partition(" ")
        if stamp.isdigit():
            mtimes[name] = int(stamp)
    stale: set[str] = set()
    for service, (state, started) in service_states(remote, services).items():
        newest = max((mtimes.get(f.path, 0) for f in files if service in f.services), default=0)
        if state == "active" and started is not None and newest > started:
            stale.add(service)
    return stale
