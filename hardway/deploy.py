"""Putting files on a node, and remembering what hardway put there.

Each node keeps a record, ``/var/lib/hardway/deployed.json`` (0600): path -> sha256, mode, owner,
chapter of every file hardway installed. It is what makes hardway safe on machines it does not
own: a file at a planned path that is not in the record (say, the Debian package's
``/etc/containerd/config.toml``) is foreign, and hardway stops and names it instead of replacing
it; ``adopt`` replaces it keeping the original as ``<path>.hardway-orig-<time>``. Re-runs,
rotation and reset act on the record. A file that already holds exactly the planned bytes is
recorded without being touched (clusters deployed before the record existed).

Pushing is two steps. ``plan_push`` is pure: from the node's facts (hashes, stats, the record) it
decides what to write, what to chmod and what is foreign. ``push`` carries it out in ONE command
per node: the files travel as a tar stream on its stdin (secrets last) into a hardway-owned 0700
staging dir (umask 077: nothing in it is ever readable by others), each is installed next to its
target and renamed over it (a reader never sees half a file), the record is updated the same
way, the staging dir is removed (a trap removes it when anything fails, a cut stream included),
and the caller's follow-up commands run (daemon-reload, enable, start). Staging dirs that
survive a killed run are swept by the next run, by name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import socket
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, FileStat, file_hashes, file_stats, gather
from hardway.files import File, stamps

if TYPE_CHECKING:
    from hardway.remote import Remote

HARDWAY_DIR = "/var/lib/hardway"
RECORD = f"{HARDWAY_DIR}/deployed.json"
STAGING = f"{HARDWAY_DIR}/staging"
STALE_AFTER_S = 24 * 3600  # another jumpbox's staging dir older than this is a killed run's


@dataclass(frozen=True)
class Deployed:
    """One entry of a node's record."""

    sha256: str
    mode: int
    owner: str
    group: str
    chapter: str

    def to_json(self) -> dict[str, str]:
        return {"sha256": self.sha256, "mode": f"{self.mode:04o}", "owner": self.owner, "group": self.group,
                "chapter": self.chapter}


def parse_record(out: FactOutput) -> dict[str, Deployed]:
    text = out.stdout.strip()
    if not text:
        return {}  # nothing deployed yet
    broken = (f"{RECORD} is not hardway's deployment record; move it aside (`mv {RECORD} {RECORD}.broken`) "
              "and re-run: files that hold exactly the planned bytes are recorded again, others are "
              "then reported as foreign")
    try:
        doc = json.loads(text)
        return {path: Deployed(e["sha256"], int(e["mode"], 8), e["owner"], e["group"], e["chapter"])
                for path, e in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HardwayError(broken) from None


RECORD_FACT: Fact[dict[str, Deployed]] = Fact("deployed", f"cat {RECORD} 2>/dev/null || true", parse_record)


def holds(chapter: str) -> str:
    """A shell test: this node's record lists files of ``chapter`` (hardway deployed it here)."""
    return f"grep -qsF {shlex.quote(json.dumps({'chapter': chapter})[1:-1])} {RECORD}"


def record_bytes(record: dict[str, Deployed]) -> bytes:
    doc = {"version": 1, "files": {p: record[p].to_json() for p in sorted(record)}}
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


# --- staging ---------------------------------------------------------------------------------

_HOST = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower())[:40] or "jumpbox"
_RUN = re.compile(r"^run-(?P<host>[a-z0-9-]+)-(?P<pid>\d+)-(?P<epoch>\d+)-[0-9a-f]{8}$")


def run_name(now: float | None = None) -> str:
    """This run's staging dir name: which jumpbox and process made it, and when."""
    return f"run-{_HOST}-{os.getpid()}-{int(now or time.time())}-{secrets.token_hex(4)}"


def _parse_listing(out: FactOutput) -> list[str]:
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


STAGING_FACT: Fact[list[str]] = Fact("staging", f"ls -1 {STAGING} 2>/dev/null; true", _parse_listing)


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def sweepable(names: Iterable[str], *, now: float | None = None, host: str = _HOST,
              alive: Callable[[int], bool] = _pid_alive) -> list[str]:
    """Staging dirs that killed runs left: this jumpbox's whose process is gone, or anyone's older
    than a day. Names that are not ours are never touched."""
    now = time.time() if now is None else now
    out = []
    for name in names:
        m = _RUN.match(name)
        if m is None:
            continue
        mine_and_dead = m["host"] == host and int(m["pid"]) != os.getpid() and not alive(int(m["pid"]))
        if mine_and_dead or now - int(m["epoch"]) > STALE_AFTER_S:
            out.append(name)
    return out


def sweep_command(names: Sequence[str]) -> str:
    return "rm -rf -- " + " ".join(shlex.quote(f"{STAGING}/{n}") for n in names)


# --- deciding --------------------------------------------------------------------------------


def disk_facts(files: Sequence[File]) -> list[Fact]:
    """What plan_push needs to know about a node's disk, for one gather."""
    paths = [f.path for f in files]
    return [file_hashes(paths, stamps(files)), file_stats(paths), RECORD_FACT, STAGING_FACT]


@dataclass
class PushPlan:
    """What one push does on one node."""

    write: list[File] = field(default_factory=list)  # missing, or ours with other bytes, or adopted
    fix: list[File] = field(default_factory=list)  # the planned bytes, but mode/owner drifted
    adopt: list[File] = field(default_factory=list)  # foreign files replaced on request (backed up)
    foreign: list[File] = field(default_factory=list)  # refused: not deployed by hardway
    record: dict[str, Deployed] = field(default_factory=dict)  # the record after the push
    record_changed: bool = False

    @property
    def changed(self) -> list[File]:
        return self.write + self.fix

    @property
    def idle(self) -> bool:
        return not self.write and not self.fix and not self.record_changed


def _entry(f: File) -> Deployed:
    return Deployed(f.sha256, f.mode, f.owner, f.group, f.chapter)


def plan_push(files: Sequence[File], hashes: dict[str, str | None], stats: dict[str, FileStat | None],
              record: dict[str, Deployed], *, adopt: bool = False) -> PushPlan:
    """Pure: what to write, chmod, adopt or refuse, and the record afterwards."""
    plan = PushPlan(record=dict(record))
    for f in files:
        have = hashes.get(f.path)
        st = stats.get(f.path)
        if have == f.sha256:
            if st is not None and (st.mode, st.owner, st.group) != (f.mode, f.owner, f.group):
                plan.fix.append(f)
        elif have is None or f.path in record:
            plan.write.append(f)
        elif adopt:
            plan.write.append(f)
            plan.adopt.append(f)
        else:
            plan.foreign.append(f)
            continue
        plan.record[f.path] = _entry(f)
    plan.record_changed = plan.record != record
    return plan


def foreign_error(node: str, files: Sequence[File], apply_command: str) -> HardwayError:
    first = files[0]
    more = f" (and {len(files) - 1} more: {', '.join(f.path for f in files[1:4])})" if len(files) > 1 else ""
    return HardwayError(
        f"{node}: {first.path} exists and was not deployed by hardway{more}; it differs from what chapter "
        f"{first.chapter} installs there, so nothing was changed. Move it aside if it is not needed, or run "
        f"`{apply_command} --adopt` to replace it (the original is kept as {first.path}.hardway-orig-<time>)")


# --- doing -----------------------------------------------------------------------------------


@dataclass
class PushReport:
    written: list[str] = field(default_factory=list)  # paths whose bytes were installed
    fixed: list[str] = field(default_factory=list)  # paths chmod/chown-ed
    bytes_sent: int = 0
    seconds: float = 0.0


_BLOCK = 512
_CHUNK = 1 << 20


def _tar(plan: PushPlan, record: bytes, report: PushReport) -> Callable[[BinaryIO], None]:
    """The staged files as a tar stream: member i is plan.write[i], then the record. Public files
    first, secrets last, so a run killed mid-stream most likely carried no key at all.

    Headers come from tarfile; the bodies are copied a MiB at a time (tarfile's own 16 KiB copy
    halved the push rate measured here)."""

    def member(out: BinaryIO, name: str, size: int, chunks: Iterable[bytes]) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        out.write(info.tobuf(format=tarfile.PAX_FORMAT))
        for chunk in chunks:
            out.write(chunk)
        out.write(b"\0" * (-size % _BLOCK))
        report.bytes_sent += size

    def write(out: BinaryIO) -> None:
        for i in sorted(range(len(plan.write)), key=lambda i: plan.write[i].secret):
            f = plan.write[i]
            if f.source is not None:
                with f.source.open("rb") as fh:
                    member(out, str(i), os.fstat(fh.fileno()).st_size, iter(lambda fh=fh: fh.read(_CHUNK), b""))
            else:
                member(out, str(i), len(f.data()), [f.data()])
        member(out, "record", len(record), [record])
        out.write(b"\0" * (2 * _BLOCK))  # end of archive

    return write


def push_script(plan: PushPlan, staging: str, *, then: Sequence[str] = (), sweep: Sequence[str] = (),
                stamp: int | None = None) -> str:
    """The one command that carries out ``plan``: unpack the staged files (stdin), put each next to
    its target and rename it over (atomic), update the record, remove the staging dir (also when
    anything fails), then ``then``."""
    script = [sweep_command(sweep)] if sweep else []
    if plan.write or plan.record_changed:
        q = shlex.quote(staging)
        script += [f"install -d -m 0700 {HARDWAY_DIR} {STAGING}", "umask 077", f"mkdir {q}",
                   f"trap 'rm -rf -- {q}' EXIT", f"tar -x --no-same-owner -C {q}", "umask 022"]
        dirs = sorted({f.path.rsplit("/", 1)[0] or "/" for f in plan.write})
        if dirs:
            script.append("install -d -m 0755 -- " + " ".join(shlex.quote(d) for d in dirs))
        stamp = int(time.time()) if stamp is None else stamp
        for f in plan.adopt:
            script.append(f"cp -a {shlex.quote(f.path)} {shlex.quote(f'{f.path}.hardway-orig-{stamp}')}")
        for i, f in enumerate(plan.write):
            # Owner and mode set on the staged file, then renamed next to its target (a copy only
            # if the target is on another filesystem) and renamed over it: atomic, and big files
            # are not written twice.
            src, staged = f"{q}/{i}", shlex.quote(f"{f.path}.hardway-new")
            script.append(f"chown {shlex.quote(f.owner)}:{shlex.quote(f.group)} {src}")
            script.append(f"chmod {f.mode:04o} {src}")
            if f.stamp is not None:
                script.append(f"touch -m -d @{f.stamp} {src}")
            script.append(f"mv {src} {staged}")
            script.append(f"mv -f {staged} {shlex.quote(f.path)}")
        script.append(f"mv {q}/record {RECORD}.hardway-new")
        script.append(f"mv -f {RECORD}.hardway-new {RECORD}")
    for f in plan.fix:
        script.append(f"chown {shlex.quote(f.owner)}:{shlex.quote(f.group)} {shlex.quote(f.path)}")
        script.append(f"chmod {f.mode:04o} {shlex.quote(f.path)}")
    script.extend(then)
    return "set -e; " + "; ".join(script) if script else ""


def push(remote: Remote, plan: PushPlan, *, then: Sequence[str] = (), sweep: Sequence[str] = ()) -> PushReport:
    """Carry out ``plan`` on ``remote`` in ONE command (the files travel as its stdin); ``then`` runs
    after the files are in place (daemon-reload, enable, start). ``sweep``: staging dirs of killed
    runs to remove on the way."""
    assert not plan.foreign, "push of a plan with foreign files"
    report = PushReport(written=[f.path for f in plan.write], fixed=[f.path for f in plan.fix])
    t0 = time.monotonic()
    script = push_script(plan, f"{STAGING}/{run_name()}", then=then, sweep=sweep)
    if plan.write or plan.record_changed:
        remote.feed(script, _tar(plan, record_bytes(plan.record), report))
    elif script:
        remote.run(script)
    report.seconds = time.monotonic() - t0
    return report


def install(remote: Remote, files: Sequence[File], *, adopt: bool = False, then: Sequence[str] = ()) -> PushReport:
    """Make ``remote`` hold ``files``: ask its disk (one round trip), decide, push. A file hardway did
    not deploy is refused (HardwayError naming node and path) unless ``adopt``."""
    hashes_f, stats_f, record_f, staging_f = disk_facts(files)
    facts = gather(remote, [hashes_f, stats_f, record_f, staging_f])
    plan = plan_push(files, facts[hashes_f], facts[stats_f], facts[record_f], adopt=adopt)
    if plan.foreign:
        raise foreign_error(remote.node.name, plan.foreign, "the same command")
    return push(remote, plan, then=then, sweep=sweepable(facts[staging_f]))
