"""A fake of the remote layer for unit tests (after httpx's MockTransport): facts answered by name.

``FakeNode`` holds an in-memory disk and service table. ``gather`` answers each fact by its name:
first from ``node.facts[name]`` (a test's handler: ``(fact, node) -> FactOutput | str``, or a
list of outputs given one per call, the last repeated), else from built-in answers derived from the
disk and services (file hashes and stats, the deployment record, staging dirs, unit states). The
real parsers then read those outputs, so the logic under test sees exactly what it would see on a
node. ``run`` emulates the handful of commands pushes and starts issue (install, mv, rm, cp,
chmod, chown, systemctl, and the tar stream of ``feed``) and records every command. It never
replaces the lab test of a feature.
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from hardway.deploy import RECORD, STAGING
from hardway.facts import Fact, FactOutput, parts_output
from hardway.inventory import Inventory, Node
from hardway.remote import CommandResult, RemoteError

FactAnswer = Callable[[Fact, "FakeNode"], FactOutput | str] | list[FactOutput | str] | FactOutput | str
Handler = Callable[[str], CommandResult | str | None]


@dataclass
class FakeFile:
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    mtime: int = 0
    ctime: int = 0


@dataclass
class FakeService:
    active: bool = True
    started: int = 0  # on the node's clock, like ActiveEnterTimestamp
    enabled: bool = True
    failed: bool = False


@dataclass
class FakeNode:
    files: dict[str, FakeFile] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # big files (snapshots) that ``fetch`` streams
    dirs: set[str] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)  # fact names, in the order gathers asked them
    rounds: list[list[str]] = field(default_factory=list)  # one entry per gather (one exec): its fact names
    facts: dict[str, FactAnswer] = field(default_factory=dict)
    handlers: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)
    services: dict[str, FakeService] = field(default_factory=dict)
    starts: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    unreachable: bool = False
    clock: int = 1000  # advances on every write or (re)start
    events: list[str] = field(default_factory=list)  # "start etcd", "restart etcd", "gather etcd_health", ...
    arch: str = "x86_64"
    name: str = ""
    log: list[str] | None = None  # the cluster's log: "<node>: <event>" in the order things happened

    def event(self, what: str) -> None:
        self.events.append(what)
        if self.log is not None:
            self.log.append(f"{self.name}: {what}")

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def on(self, pattern: str, handler: Handler | str) -> None:
        """Answer commands matching ``pattern`` (not facts: those go in ``facts``)."""
        fn = handler if callable(handler) else (lambda _c, h=handler: h)
        self.handlers.append((re.compile(pattern), fn))

    def answer(self, fact: Fact) -> FactOutput:
        self.asked.append(fact.name)
        handler = self.facts.get(fact.name)
        if handler is None:
            return self._builtin(fact)
        if isinstance(handler, list):
            out = handler.pop(0) if len(handler) > 1 else handler[0]
        elif callable(handler):
            out = handler(fact, self)
        else:
            out = handler
        return out if isinstance(out, FactOutput) else FactOutput(out, 0)

    def _builtin(self, fact: Fact) -> FactOutput:
        fs = self.files
        if fact.args and all(isinstance(a, Fact) for a in fact.args):  # facts.concurrently: answer each part
            return parts_output([self.answer(part) for part in fact.args])
        if fact.name == "file_hashes":
            paths = fact.args[0]
            return FactOutput("".join(f"{hashlib.sha256(fs[p].data).hexdigest()}  {p}\n" for p in paths if p in fs))
        if fact.name == "file_stats":
            return FactOutput("".join(f"{fs[p].mode:o} {fs[p].owner} {fs[p].group} {fs[p].mtime} {fs[p].ctime} {p}\n"
                                      if p in fs else f"700 root root 0 0 {p}\n"
                                      for p in fact.args if p in fs or p in self.dirs))
        if fact.name == "deployed":
            return FactOutput(fs[RECORD].data.decode() if RECORD in fs else "")
        if fact.name == "staging":
            names = {d[len(STAGING) + 1:].split("/")[0] for d in self.dirs | set(fs) if d.startswith(STAGING + "/")}
            return FactOutput("".join(f"{n}\n" for n in sorted(names)))
        if fact.name == "unit_states":
            blocks = []
            for unit in fact.args:
                svc = self.services.get(unit)
                state = "inactive" if svc is None or not svc.active else "active"
                state = "failed" if svc is not None and svc.failed else state
                blocks.append(f"Id={unit}.service\nActiveState={state}\n"
                              f"ActiveEnterTimestamp={f'@{svc.started}' if svc and svc.active else ''}\n"
                              f"UnitFileState={'enabled' if svc and svc.enabled else 'disabled'}\n"
                              f"MainPID={100 + len(unit) if svc and svc.active else 0}\n")
            return FactOutput("\n".join(blocks))
        if fact.name == "file_text":
            path = fact.args[0]
            return FactOutput(fs[path].data.decode(), 0) if path in fs else FactOutput("No such file", 1)
        if fact.name == "arch":
            return FactOutput(self.arch)
        if fact.name == "listeners":
            return FactOutput("")
        raise AssertionError(f"the fake has no answer for fact {fact.name!r}: give it one in node.facts")


class FakeRemote:
    def __init__(self, node: Node, state: FakeNode) -> None:
        self.node = node
        self.state = state
        self._stdin = b""
        self._traps: list[str] = []

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> CommandResult:
        self.state.commands.append(command)
        if command.startswith("set -e;"):
            self.state.event("push")
        result = self._dispatch(command)
        if check and not result.ok:
            raise RemoteError(f"{self.node.name}: `{command}` exited {result.exit_code}: {result.stderr.strip()}")
        return result

    def gather(self, facts: Sequence[Fact], timeout: int | None = None, *, parallel: bool = False,
               ) -> dict[str, FactOutput]:
        self.state.rounds.append([f.name for f in facts])
        for f in facts:
            self.state.event(f"gather {f.name}")
        return {f.key: self.state.answer(f) for f in facts}

    def feed(self, command: str, write: Callable[[BinaryIO], None], *, timeout: int | None = None) -> CommandResult:
        buf = io.BytesIO()
        write(buf)
        self._stdin = buf.getvalue()
        self._traps: list[str] = []
        try:
            return self.run(command)
        finally:
            for cleanup in self._traps:
                self._builtin(cleanup)

    def fetch(self, command: str, sink: Callable[[bytes], None], *, timeout: int | None = None) -> CommandResult:
        """``cat PATH`` streams the node's blob at PATH (``FakeNode.blobs``); other commands their stdout."""
        self.state.commands.append(command)
        words = shlex.split(command)
        if words[0] == "cat" and words[-1] in self.state.blobs:
            sink(self.state.blobs[words[-1]])
            return CommandResult(command, 0, "", "")
        result = self._dispatch(command)
        if not result.ok:
            raise RemoteError(f"{self.node.name}: `{command}` exited {result.exit_code}: {result.stderr.strip()}")
        sink(result.stdout.encode())
        return result

    def close(self) -> None:
        pass

    # --- emulation ----------------------------------------------------------------------------
    def _dispatch(self, command: str) -> CommandResult:
        for pattern, handler in self.state.handlers:
            if pattern.search(command):
                out = handler(command)
                if isinstance(out, CommandResult):
                    return out
                return CommandResult(command, 0, out or "", "")
        out: list[str] = []
        for part in re.split(r";\s*|\s*&&\s*", command.removeprefix("set -e; ")):
            part = part.strip()
            if part:
                out.append(self._builtin(part))
        return CommandResult(command, 0, "".join(out), "")

    def _builtin(self, part: str) -> str:
        fs, node = self.state.files, self.state
        part = part.removesuffix(" 2>/dev/null || true")
        words = shlex.split(part)
        if words[0] == "umask":
            return ""
        if words[0] == "mkdir":
            node.dirs.add(words[-1])
            return ""
        if words[0] == "trap":  # `trap 'cmd' EXIT`: run when the command ends
            self._traps.append(words[1])
            return ""
        if words[0] == "tar":  # `tar -x --no-same-owner -C DIR`, the archive on stdin
            target = words[-1]
            with tarfile.open(fileobj=io.BytesIO(self._stdin), mode="r|") as tar:
                for member in tar:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    fs[f"{target}/{member.name}"] = FakeFile(data, member.mode)
                    node.uploads.append(f"{target}/{member.name}")
            return ""
        if words[0] == "systemctl":
            return self._systemctl(words)
        if words[:2] == ["install", "-d"]:
            node.dirs.update(w for w in words[2:] if w.startswith("/"))
            return ""
        if words[0] == "install":
            mode, owner, group, src, dst = int(words[2], 8), words[4], words[6], words[7], words[8]
            now = node.tick()
            fs[dst] = FakeFile(fs[src].data, mode, owner, group, now, now)
            return ""
        if words[0] == "mv":
            src, dst = words[-2], words[-1]
            fs[dst] = fs.pop(src)
            fs[dst].ctime = node.tick()
            return ""
        if words[:2] == ["cp", "-a"]:
            src = fs[words[2]]
            fs[words[3]] = FakeFile(src.data, src.mode, src.owner, src.group, src.mtime, node.tick())
            return ""
        if words[:2] in (["rm", "-rf"], ["rm", "-f"]):
            for target in (w for w in words[2:] if w != "--"):
                for p in [p for p in fs if p == target or p.startswith(target + "/")]:
                    del fs[p]
                node.dirs = {d for d in node.dirs if d != target and not d.startswith(target + "/")}
            return ""
        if words[0] == "chown":
            owner, group = words[1].split(":")
            fs[words[2]].owner, fs[words[2]].group = owner, group
            return ""
        if words[0] == "chmod":
            fs[words[2]].mode = int(words[1], 8)
            return ""
        if words[:3] == ["touch", "-m", "-d"]:  # `touch -m -d @EPOCH path`
            fs[words[4]].mtime, fs[words[4]].ctime = int(words[3].lstrip("@")), node.tick()
            return ""
        if words[0] in ("swapoff", "modprobe", "sysctl", "ip"):  # kernel state: the command log is the record
            node.event(part)
            return ""
        if words[0] == "true":
            return ""
        raise AssertionError(f"the fake has no handler for {part!r}")

    def _systemctl(self, words: list[str]) -> str:
        verb = words[1]
        units = [w.removesuffix(".service") for w in words[2:] if not w.startswith("-") and not w.startswith("2>")]
        services, node = self.state.services, self.state
        if verb in ("start", "restart"):
            for unit in units:
                services[unit] = FakeService(True, node.tick(), services.get(unit, FakeService()).enabled)
                (node.starts if verb == "start" else node.restarts).append(unit)
                node.event(f"{verb} {unit}")
            return ""
        if verb == "disable":
            for unit in units:
                svc = services.setdefault(unit, FakeService(active=False))
                svc.enabled = False
                if "--now" in words:
                    svc.active = False
            return ""
        if verb == "enable":
            for unit in units:
                svc = services.setdefault(unit, FakeService(active=False))
                svc.enabled = True
                if "--now" in words and not svc.active:
                    services[unit] = FakeService(True, node.tick(), True)
            return ""
        if verb == "stop":
            for unit in units:
                if unit in services:
                    services[unit].active = False
                node.event(f"stop {unit}")
            return ""
        if verb == "reload":
            for unit in units:
                node.event(f"reload {unit}")
            return ""
        if verb in ("daemon-reload", "reset-failed"):
            node.event(verb)
            return ""
        raise AssertionError(f"the fake has no systemctl {verb}")


class FakeCluster:
    """One FakeNode per node; ``connector`` plugs into hardway.remote.fan_out and the chapters."""

    def __init__(self) -> None:
        self.nodes: dict[str, FakeNode] = {}
        self.log: list[str] = []

    def __getitem__(self, name: str) -> FakeNode:
        return self.nodes.setdefault(name, FakeNode(name=name, log=self.log))

    def connector(self, inv: Inventory, node: Node) -> FakeRemote:
        state = self[node.name]
        if state.unreachable:
            raise RemoteError(f"{node.name} ({node.address}:22): unreachable (no answer within 10s)")
        return FakeRemote(node, state)


def restart_whatever_runs(monkeypatch) -> None:  # monkeypatch: pytest.MonkeyPatch
    """Break the start logic on purpose: every running unit is restarted on every run. A chapter's
    re-run test must notice (the tests that show their own assertion can fail use this)."""
    from hardway import services

    real = services.plan_start

    def restart_everything(units, written, files, stats, states, **kw):
        plan = real(units, written, files, stats, states, **kw)
        running = tuple(u for u in units if states[u].active == "active")
        return services.StartPlan(plan.reload, plan.enable, plan.start, running)

    monkeypatch.setattr(services, "plan_start", restart_everything)
