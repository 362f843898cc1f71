"""A recording fake of the remote layer, for unit tests of planning and error paths.

It emulates the handful of commands hardway.remote issues (sha256sum, stat, mktemp, install,
mv, chmod, chown, rm) over an in-memory file system and records every command, so a test can
assert what would have been run. Anything else is answered by handlers the test registers.
It never replaces the lab test of the same feature.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from hardway.inventory import Inventory, Node
from hardway.remote import RemoteError, Result

Handler = Callable[[str], Result | str | None]


@dataclass
class FakeFile:
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    mtime: int = 0


@dataclass
class FakeService:
    active: bool = True
    started: int = 0  # on the node's clock, like ActiveEnterTimestamp


@dataclass
class FakeNode:
    files: dict[str, FakeFile] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    handlers: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)
    services: dict[str, FakeService] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)
    unreachable: bool = False
    clock: int = 1000  # advances on every write or restart

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def on(self, pattern: str, handler: Handler | str) -> None:
        fn = handler if callable(handler) else (lambda _c, h=handler: h)
        self.handlers.append((re.compile(pattern), fn))


class FakeRemote:
    def __init__(self, node: Node, state: FakeNode) -> None:
        self.node = node
        self.state = state
        self._tmp = 0

    def run(self, command: str, *, check: bool = True, timeout: int | None = None) -> Result:
        self.state.commands.append(command)
        result = self._dispatch(command)
        if check and not result.ok:
            raise RemoteError(f"{self.node.name}: `{command}` exited {result.exit_code}: {result.stderr.strip()}")
        return result

    def upload(self, data: bytes, remote_path: str) -> None:
        self.state.uploads.append(remote_path)
        self.state.files[remote_path] = FakeFile(data)

    def staging_dir(self) -> str:
        self.state.commands.append("(login user) mktemp -d")
        self._tmp += 1
        return f"/tmp/hardway.fake{self._tmp}"

    def close(self) -> None:
        pass

    # --- emulation ----------------------------------------------------------------------------
    def _dispatch(self, command: str) -> Result:
        for pattern, handler in self.state.handlers:
            if pattern.search(command):
                out = handler(command)
                if isinstance(out, Result):
                    return out
                return Result(command, 0, out or "", "")
        out: list[str] = []
        for part in re.split(r";\s*", command.removeprefix("set -e; ")):
            part = part.strip()
            if part:
                out.append(self._builtin(part))
        return Result(command, 0, "".join(out), "")

    def _builtin(self, part: str) -> str:
        fs = self.state.files
        if part.startswith("sha256sum"):
            words = shlex.split(part.split(" 2>/dev/null")[0])[2:]
            return "".join(f"{hashlib.sha256(fs[p].data).hexdigest()}  {p}\n" for p in words if p in fs)
        if part.startswith("stat -c"):
            words = shlex.split(part.split(" 2>/dev/null")[0])
            fmt, paths = words[2], words[4:]
            if fmt == "%Y %n":
                return "".join(f"{fs[p].mtime} {p}\n" for p in paths if p in fs)
            return "".join(f"{fs[p].mode:o} {fs[p].owner} {fs[p].group} {p}\n" for p in paths if p in fs)
        if part.startswith("systemctl"):
            return self._systemctl(shlex.split(part))
        if part.startswith("install -d"):
            return ""
        words = shlex.split(part)
        if words[0] == "install":
            mode, owner, group, src, dst = int(words[2], 8), words[4], words[6], words[7], words[8]
            fs[dst] = FakeFile(fs[src].data, mode, owner, group, self.state.tick())
            return ""
        if words[:2] == ["mv", "-f"]:
            fs[words[3]] = fs.pop(words[2])
            return ""
        if words[:2] == ["rm", "-rf"]:
            for p in [p for p in fs if p.startswith(words[2] + "/")]:
                del fs[p]
            return ""
        if words[0] == "chown":
            owner, group = words[1].split(":")
            fs[words[2]].owner, fs[words[2]].group = owner, group
            return ""
        if words[0] == "chmod":
            fs[words[2]].mode = int(words[1], 8)
            return ""
        if words[0] == "true":
            return ""
        raise AssertionError(f"the fake has no handler for {part!r}")

    def _systemctl(self, words: list[str]) -> str:
        verb, unit = words[1], words[-1]
        services = self.state.services
        if verb == "is-active":
            return "active\n" if unit in services and services[unit].active else "inactive\n"
        if verb == "show" and "-p" in words:
            blocks = []
            for unit in (w.removesuffix(".service") for w in words[words.index("--") + 1:]):
                svc = services.get(unit)
                blocks.append(f"Id={unit}.service\nActiveState={'active' if svc and svc.active else 'inactive'}\n"
                              f"ActiveEnterTimestamp={f'@{svc.started}' if svc else ''}\n")
            return "\n".join(blocks)
        if verb == "restart":
            services[unit] = FakeService(True, self.state.tick())
            self.state.restarts.append(unit)
            return ""
        if verb in ("daemon-reload", "enable", "start", "reset-failed"):
            return ""
        raise AssertionError(f"the fake has no systemctl {verb}")


class FakeCluster:
    """One FakeNode per node; ``connector`` plugs into hardway.remote.fan_out and the chapters."""

    def __init__(self) -> None:
        self.nodes: dict[str, FakeNode] = {}

    def __getitem__(self, name: str) -> FakeNode:
        return self.nodes.setdefault(name, FakeNode())

    def connector(self, inv: Inventory, node: Node) -> FakeRemote:
        state = self[node.name]
        if state.unreachable:
            raise RemoteError(f"{node.name} ({node.address}:22): unreachable (no answer within 10s)")
        return FakeRemote(node, state)
