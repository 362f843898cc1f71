"""Chapter etcd: a TLS etcd cluster, one member per controller.

bootstrap = preflight → push → start → wait → verify. Preflight refuses to touch anything when a
node is unreachable, the binary does not fit, a port is taken or a data dir belongs to another
cluster; push writes only files whose sha256 differs; start touches only members whose files
changed (all at once when none is running: etcd is Type=notify and blocks until quorum; one at a
time, each healthy before the next, when the cluster is serving).
"""

from __future__ import annotations

import base64
import json
import platform
import re
import shlex
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hardway import plan, remote
from hardway.chapters import etcd_ids
from hardway.chapters.certificates import throwaway_client
from hardway.checks import FAIL, OK, WARN, Check, Result
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.remote import Connector, Progress, Remote
from hardway.state import PkiState

CHAPTER = "etcd"
UNIT = "etcd"
UNIT_PATH = "/etc/systemd/system/etcd.service"
CA, CERT, KEY = "/etc/etcd/ca.crt", "/etc/etcd/etcd.crt", "/etc/etcd/etcd.key"
ETCDCTL = "/usr/local/bin/etcdctl"
FSYNC_P99_LIMIT_MS = 10.0  # etcd's hardware guide: fdatasync p99 under 10 ms

# Known failure signatures in the etcd journal -> (cause, fix).
SIGNATURES: tuple[tuple[str, str, str], ...] = (
    (r"request cluster ID mismatch",
     "a member's data dir belongs to another cluster (a stale member re-added)",
     "on the member whose data is stale: stop etcd, move {data_dir}/member aside, `etcdctl member remove` and "
     "`member add` it, and start it with --initial-cluster-state existing"),
    (r"has already been bootstrapped",
     "this member lost its data dir after it had joined the cluster",
     "`etcdctl member remove` it and `member add` it again, then start it with --initial-cluster-state existing"),
    (r"permanently removed from the cluster",
     "this member was removed from the cluster but still has its old data dir",
     "stop etcd, move {data_dir}/member aside, `member add` it again and start with "
     "--initial-cluster-state existing"),
    (r"sync duration of .* expected less than 1s|slow fdatasync",
     "the disk is too slow for etcd (fdatasync); leader elections will fail",
     "put {data_dir} on an SSD; bootstrap-etcd's preflight prints the measured fdatasync p99"),
    (r"no such file or directory",
     "a file the unit references is missing on the node",
     "run `invoke bootstrap-etcd` to push the missing file"),
    (r"Missing '='|Unknown key '--|Ignoring unknown escape sequences",
     "the unit file has a broken line continuation (a hand edit or a mangled heredoc)",
     "run `invoke bootstrap-etcd` to push the rendered unit again; do not hand-edit continuations"),
    (r"status=203/EXEC",
     "systemd could not execute the etcd binary: missing, not executable or the wrong architecture",
     "run `invoke bootstrap-etcd`: preflight checks the binary's architecture and pushes it"),
)


def ctl(inv: Inventory, node: Node, args: str, endpoints: str | None = None) -> str:
    """An etcdctl command line run ON a controller with that member's own client certificate."""
    eps = endpoints or inv.etcd_client_url(node)
    return (f"ETCDCTL_API=3 {ETCDCTL} --endpoints={shlex.quote(eps)} --cacert={CA} --cert={CERT} "
            f"--key={KEY} --command-timeout=5s --dial-timeout=3s {args}")


def planned_files(inv: Inventory, state: PkiState, cache_dir: Path | None) -> dict[str, list[File]]:
    return {n.name: plan.chapter_files(inv, n, state, CHAPTER, cache_dir=cache_dir) for n in inv.controllers}


# --- preflight -------------------------------------------------------------------------------

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l", 0xF3: "riscv64", 0x15: "ppc64le",
                0x16: "s390x", 0x03: "i686"}


def elf_arch(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"), "unknown")


def exec_tokens(unit_text: str) -> list[str]:
    """The words of a unit's ExecStart, continuations joined (a hand-broken unit still yields words)."""
    joined = re.sub(r"\\\n\s*", " ", unit_text)
    line = next((ln for ln in joined.splitlines() if ln.startswith("ExecStart=")), "")
    try:
        return shlex.split(line.removeprefix("ExecStart="))
    except ValueError:
        return line.split()


def unit_flags(unit_text: str) -> list[str]:
    """The --flags of a unit's ExecStart, without their values."""
    return [tok.split("=", 1)[0] for tok in exec_tokens(unit_text) if tok.startswith("--")]


def binary_help(binary: Path) -> tuple[str, str]:
    """(version line, help text) of the etcd binary being distributed — asked, not assumed."""
    try:
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20)
        helptext = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HardwayError(f"{binary}: cannot run it to list its flags: {exc}") from None
    first = (version.stdout or version.stderr).strip().splitlines()
    return (first[0] if first else "unknown version"), helptext.stdout + helptext.stderr


def unknown_flags(flags: Sequence[str], helptext: str) -> list[str]:
    return [f for f in flags if not re.search(rf"(^|\s){re.escape(f)}(\s|=|$)", helptext, re.M)]


@dataclass(frozen=True)
class Finding:
    node: str
    status: str  # ok / warn / fail
    message: str


@dataclass
class NodeFacts:
    """What preflight learns about one controller (filled by `gather_preflight`)."""

    arch: str = ""
    listeners: dict[int, str] = field(default_factory=dict)  # port -> "pid/command" holding it
    etcd_main_pid: str = "0"
    data_dir_entries: list[str] = field(default_factory=list)
    wal_head: bytes | None = None
    fsync_p99_ms: float | None = None


FSYNC_PROBE = r"""
import os, sys, time
d = sys.argv[1]
path = os.path.join(d, ".hardway-fsync-probe")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
buf = b"x" * 2300  # etcd's fio recipe: 2300-byte sequential writes, fdatasync after each
lat = []
try:
    for _ in range(int(sys.argv[2])):
        os.write(fd, buf)
        t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
finally:
    os.close(fd); os.unlink(path)
lat.sort()
print("%.3f" % (lat[int(len(lat) * 0.99) - 1] * 1000))
"""


def gather_preflight(inv: Inventory, r: Remote, fsync_samples: int = 300) -> NodeFacts:
    """Everything preflight needs from one controller, in one round trip."""
    data_dir = shlex.quote(inv.etcd.data_dir)
    parent = shlex.quote(inv.etcd.data_dir.rsplit("/", 1)[0] or "/")
    out = remote.run_sections(r, {
        "arch": "uname -m",
        "listeners": "ss -Htlnp 2>/dev/null || true",
        "mainpid": f"systemctl show -p MainPID --value {UNIT} 2>/dev/null || echo 0",
        "entries": f"ls -A {data_dir} 2>/dev/null || true",
        "wal": f"f=$(ls {data_dir}/member/wal/*.wal 2>/dev/null | head -n 1); "
               "if [ -n \"$f\" ]; then head -c 4096 \"$f\" | base64 -w0; fi",
        # measure where the data will live: the data dir if it exists, else its parent
        "fsync": f"d={data_dir}; [ -d \"$d\" ] || d={parent}; command -v python3 >/dev/null || exit 99; "
                 f"mkdir -p \"$d\" && python3 -c {shlex.quote(FSYNC_PROBE)} \"$d\" {fsync_samples}",
    })
    facts = NodeFacts(arch=out["arch"].stdout.strip())
    for line in out["listeners"].stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            port = cols[3].rsplit(":", 1)[-1]
            if port in ("2379", "2380"):
                m = re.search(r'\("([^"]+)",pid=(\d+)', line)
                facts.listeners[int(port)] = f"{m.group(2)}/{m.group(1)}" if m else "unknown process"
    facts.etcd_main_pid = out["mainpid"].stdout.strip() or "0"
    facts.data_dir_entries = out["entries"].stdout.split()
    if "member" in facts.data_dir_entries:
        facts.wal_head = base64.b64decode(out["wal"].stdout.strip() or b"")
    if out["fsync"].ok:
        facts.fsync_p99_ms = float(out["fsync"].stdout.strip().splitlines()[-1])
    return facts


def judge_preflight(inv: Inventory, node: Node, facts: NodeFacts, binary_arch: str | None) -> list[Finding]:
    """Pure: turn one node's facts into findings (tested without machines)."""
    out: list[Finding] = []
    name = node.name
    if binary_arch and facts.arch and binary_arch != facts.arch:
        out.append(Finding(name, FAIL, f"the etcd binary is {binary_arch} but the node is {facts.arch}; "
                                       f"point binaries.etcd at the {facts.arch} release"))
    for port, holder in sorted(facts.listeners.items()):
        pid = holder.split("/", 1)[0]
        if pid != facts.etcd_main_pid:
            out.append(Finding(name, FAIL, f"port {port} is held by {holder}, not by our etcd unit; stop it "
                                           "or free the port"))
    data_dir = inv.etcd.data_dir
    if "member" in facts.data_dir_entries:
        meta = etcd_ids.wal_metadata(facts.wal_head or b"")
        want_member = etcd_ids.expected_member_id(inv, node)
        want_cluster = etcd_ids.expected_cluster_id(inv)
        aside = f"mv {data_dir}/member {data_dir}/member.stale-$(date +%Y%m%d%H%M%S)"
        fix = (f"fix: on {name}, `systemctl stop etcd; {aside}`; if the other members are serving, "
               f"re-add it (`etcdctl member remove <old id>`, `etcdctl member add {name} "
               f"--peer-urls={inv.etcd_peer_url(node)}`) and start it with --initial-cluster-state "
               "existing; otherwise re-run bootstrap-etcd. hardway never deletes data itself")
        if meta is None:
            out.append(Finding(name, FAIL, f"{data_dir}/member has no readable WAL, so it cannot be shown to "
                                           f"belong to this cluster; {fix}"))
        elif meta != (want_member, want_cluster):
            out.append(Finding(name, FAIL, f"{data_dir}/member belongs to member {meta[0]:x} of cluster "
                                           f"{meta[1]:x}, not to {want_member:x} of this cluster "
                                           f"({want_cluster:x}): a stale or foreign member; {fix}"))
        else:
            out.append(Finding(name, OK, f"{data_dir} holds this cluster's member {want_member:x}: kept"))
    elif facts.data_dir_entries:
        out.append(Finding(name, FAIL, f"{data_dir} is not empty and holds no etcd member "
                                       f"({', '.join(facts.data_dir_entries[:5])}); move it aside or set "
                                       "etcd.data_dir in the inventory"))
    if facts.fsync_p99_ms is not None:
        if facts.fsync_p99_ms >= FSYNC_P99_LIMIT_MS:
            out.append(Finding(name, WARN, f"fdatasync p99 {facts.fsync_p99_ms:.1f} ms in {data_dir} (etcd "
                                           f"wants < {FSYNC_P99_LIMIT_MS:.0f} ms): expect slow commits and "
                                           "lost leaders; use an SSD"))
        else:
            out.append(Finding(name, OK, f"fdatasync p99 {facts.fsync_p99_ms:.2f} ms"))
    else:
        out.append(Finding(name, WARN, "no python3 on the node: disk fdatasync latency not measured"))
    return out


def preflight(
    inv: Inventory, files: dict[str, list[File]], *, connector: Connector = remote.connect,
    progress: Progress | None = None,
) -> list[Finding]:
    findings: list[Finding] = []
    # The binary being distributed, asked on the jumpbox (when it can run here).
    sample = files[inv.controllers[0].name]
    etcd_file = next((f for f in sample if f.path == "/usr/local/bin/etcd"), None)
    binary_arch = None
    for name in ("etcd", "etcdctl"):
        if not any(f.path == f"/usr/local/bin/{name}" for f in sample):
            src = inv.binaries.get(name)
            findings.append(Finding("-", FAIL, f"binaries.{name} is not available"
                                    + (f" ({src.url} not fetched)" if src and src.url else
                                       f" ({src.path} missing)" if src and src.path else
                                       " (not in the inventory)")
                                    + f"; add it to {inv.path} under binaries"))
    if etcd_file is not None and etcd_file.source is not None:
        if not etcd_file.source.is_file():
            findings.append(Finding("-", FAIL, f"binaries.etcd: {etcd_file.source} does not exist"))
        else:
            binary_arch = elf_arch(etcd_file.source)
            if binary_arch is None:
                findings.append(Finding("-", FAIL, f"binaries.etcd: {etcd_file.source} is not an ELF binary"))
            elif binary_arch == platform.machine():
                version, helptext = binary_help(etcd_file.source)
                unit = next(f for f in sample if f.path == UNIT_PATH)
                bad = unknown_flags(unit_flags(unit.data().decode()), helptext)
                for flag in bad:
                    findings.append(Finding("-", FAIL, f"the unit passes {flag}, which {etcd_file.source} "
                                                       f"({version}) does not accept; use an etcd release "
                                                       "that has it or drop the flag"))
                if not bad:
                    findings.append(Finding("-", OK, f"{version}: accepts every flag in the unit"))
            else:
                findings.append(Finding("-", WARN, f"the etcd binary is {binary_arch}: its flags cannot be "
                                                   "asked on this jumpbox and were not checked"))

    def work(r: Remote) -> NodeFacts:
        if progress:
            progress(r.node, "preflight")
        return gather_preflight(inv, r)

    for outcome in remote.fan_out(inv, inv.controllers, work, connector=connector):
        if not outcome.ok:
            # fan_out's errors already start with the node's name; the Finding carries it separately
            error = (outcome.error or "failed").removeprefix(f"{outcome.node.name}: ")
            findings.append(Finding(outcome.node.name, FAIL, error))
        else:
            assert outcome.value is not None
            findings.extend(judge_preflight(inv, outcome.node, outcome.value, binary_arch))
    return findings


# --- bootstrap -------------------------------------------------------------------------------


@dataclass
class BootstrapReport:
    findings: list[Finding]
    written: dict[str, list[str]]  # node -> paths written
    restarted: list[str]
    started: list[str]
    results: list[Result]
    seconds: float

    def summary(self) -> str:
        files = sum(len(v) for v in self.written.values())
        if not files and not self.restarted and not self.started:
            return "etcd: nothing changed: 0 files written, 0 restarts"
        return (f"etcd: {files} file(s) written on {sum(1 for v in self.written.values() if v)} node(s), "
                f"started {', '.join(self.started) or 'none'}, restarted {', '.join(self.restarted) or 'none'}")


def bootstrap(
    inv: Inventory, state: PkiState, *, cache_dir: Path | None = None, connector: Connector = remote.connect,
    progress: Progress | None = None, timeout: float = 90.0,
) -> BootstrapReport:
    with remote.Pool(connector) as pool:
        return _bootstrap(inv, state, cache_dir=cache_dir, connector=pool, progress=progress or Progress(),
                          timeout=timeout)


def _bootstrap(inv: Inventory, state: PkiState, *, cache_dir: Path | None, connector: Connector,
               progress: Progress, timeout: float) -> BootstrapReport:
    t0 = time.monotonic()
    files = planned_files(inv, state, cache_dir)
    findings = preflight(inv, files, connector=connector, progress=progress)
    for f in findings:
        if f.status != OK:
            progress(f.node, f"{f.status}: {f.message}")
    failures = [f for f in findings if f.status == FAIL]
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more problem(s) above)" if len(failures) > 1 else ""
        where = "" if first.message.startswith(first.node) else f"{first.node}: "
        raise HardwayError(f"preflight failed, nothing was changed: {where}{first.message}{more}")

    # push: every node's outcome is reported; a failure on one is never a success overall.
    def push(r: Remote) -> list[str]:
        changed = remote.install(r, files[r.node.name])
        progress(r.node, f"pushed {len(changed)} changed file(s)" if changed else "files up to date")
        return [f.path for f in changed]

    pushed = remote.fan_out(inv, inv.controllers, push, connector=connector)
    written = {o.node.name: (o.value or []) for o in pushed}
    broken = [o for o in pushed if not o.ok]
    if broken:
        done = ", ".join(f"{o.node.name} ({len(o.value or [])} files)" for o in pushed if o.ok) or "none"
        raise HardwayError(f"push failed on {broken[0].error}; pushed to: {done}; etcd was not started — fix "
                           "and re-run (it converges)")

    started, restarted = start_members(inv, written, files, connector=connector, progress=progress,
                                       timeout=timeout)
    results = verify(inv, state, cache_dir=cache_dir, connector=connector)
    return BootstrapReport(findings, written, restarted, started, results, time.monotonic() - t0)


def start_members(
    inv: Inventory, written: dict[str, list[str]], files: dict[str, list[File]], *,
    connector: Connector = remote.connect, progress: Progress | None = None, timeout: float = 90.0,
) -> tuple[list[str], list[str]]:
    """Start stopped members together; restart changed running members one at a time. Returns names."""
    progress = progress or Progress()

    def prepare(r: Remote) -> tuple[str, bool]:
        paths = written.get(r.node.name, [])
        if UNIT_PATH in paths:
            remote.systemctl(r, "daemon-reload")
        remote.systemctl(r, "enable", "--quiet", UNIT)
        state = remote.unit_state(r, UNIT)
        # restart when this run changed its files, or an interrupted earlier run did
        stale = bool(paths) or UNIT in remote.stale_services(r, files[r.node.name])
        return state, stale

    states = remote.fan_out(inv, inv.controllers, prepare, connector=connector)
    bad = [o for o in states if not o.ok]
    if bad:
        raise HardwayError(f"cannot manage the etcd unit: {bad[0].error}")
    to_start = [o.node for o in states if o.value and o.value[0] != "active"]
    to_restart = [o.node for o in states if o.value and o.value[0] == "active" and o.value[1]]

    if to_start:
        # Type=notify: `start` blocks until quorum, so every stopped member starts at once.
        def start(r: Remote) -> None:
            progress(r.node, "start etcd")
            remote.systemctl(r, "reset-failed", UNIT, check=False)
            remote.systemctl(r, "start", "--no-block", UNIT)

        failed = [o for o in remote.fan_out(inv, to_start, start, connector=connector) if not o.ok]
        if failed:
            raise HardwayError(f"cannot start etcd: {failed[0].error}; see `journalctl -u etcd` there, or run "
                               "`invoke verify --chapter etcd`")
        wait_healthy(inv, to_start, connector=connector, progress=progress, timeout=timeout)
    for node in to_restart:  # rolling: quorum and service are kept
        rolling_restart(inv, node, connector=connector, progress=progress, timeout=timeout)
    return [n.name for n in to_start], [n.name for n in to_restart]


def rolling_restart(inv: Inventory, node: Node, *, connector: Connector = remote.connect,
                    progress: Progress | None = None, timeout: float = 90.0) -> None:
    progress = progress or Progress()
    r = connector(inv, node)
    try:
        progress(node, "restart etcd")
        remote.systemctl(r, "restart", UNIT, timeout=int(timeout))
    finally:
        r.close()
    wait_healthy(inv, [node], connector=connector, progress=progress, timeout=timeout)


def wait_healthy(inv: Inventory, nodes: Sequence[Node], *, connector: Connector = remote.connect,
                 progress: Progress | None = None, timeout: float = 90.0) -> None:
    """Poll each member's own endpoint until healthy; one line per member as it gets there."""
    progress = progress or Progress()

    def wait(r: Remote) -> float:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout:
            res = r.run(ctl(inv, r.node, "endpoint health"), check=False, timeout=20)
            if res.ok:
                progress(r.node, f"healthy after {time.monotonic() - t0:.1f}s")
                return time.monotonic() - t0
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
            last = last[0]
            if remote.unit_state(r, UNIT) == "failed":
                break
            time.sleep(0.5)
        raise HardwayError(f"{r.node.name}: etcd not healthy after {timeout:.0f}s ({last or 'unit failed'}); "
                           "run `invoke verify --chapter etcd` for the cause")

    outcomes = remote.fan_out(inv, nodes, wait, connector=connector)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise HardwayError(bad[0].error or "etcd not healthy")


# --- verify ----------------------------------------------------------------------------------


@dataclass
class MemberFacts:
    """What verify reads from one controller."""

    active: str = "unknown"
    unit_sha: str | None = None
    files: dict[str, tuple[int, str, str] | None] = field(default_factory=dict)
    hashes: dict[str, str | None] = field(default_factory=dict)
    referenced: dict[str, bool] = field(default_factory=dict)  # path in ExecStart -> exists
    lint: str = ""
    journal: str = ""
    health: str = ""
    healthy: bool = False
    status: dict | None = None
    members: list[dict] | None = None
    wal_head: bytes | None = None


def gather_member(inv: Inventory, r: Remote, files: list[File]) -> MemberFacts:
    """Everything verify needs from one member, in one round trip (plus one if the unit names extra files)."""
    paths = [x.path for x in files]
    out = remote.run_sections(r, {
        "active": f"systemctl is-active {UNIT}",
        "hashes": remote.hashes_command(paths),
        "modes": remote.modes_command(paths),
        "unit": f"cat {UNIT_PATH}",
        "lint": f"systemd-analyze verify {UNIT_PATH} 2>&1 >/dev/null",
        # the journal since the unit last started, so a repaired member is judged afresh
        "journal": f"s=$(systemctl show --timestamp=unix -p InactiveExitTimestamp --value {UNIT}); "
                   f"case \"$s\" in @*) w=\"--since $s\";; *) w='-n 300';; esac; "
                   f"journalctl -u {UNIT} $w --no-pager -o cat | tail -n 2000",
        "health": ctl(inv, r.node, "endpoint health"),
        "status": ctl(inv, r.node, "endpoint status -w json"),
        "members": ctl(inv, r.node, "member list -w json"),
    }, timeout=60)
    f = MemberFacts(active=out["active"].stdout.strip() or "unknown")
    f.hashes = remote.parse_hashes(out["hashes"].stdout, paths)
    f.files = remote.parse_modes(out["modes"].stdout, paths)
    f.lint = "\n".join(line for line in out["lint"].stdout.splitlines() if "etcd" in line)
    f.journal = out["journal"].stdout
    f.healthy, f.health = out["health"].ok, out["health"].stdout.strip()
    if out["status"].ok:
        try:
            f.status = json.loads(out["status"].stdout)[0]["Status"]
        except (ValueError, LookupError, TypeError):
            f.status = None
    if out["members"].ok:
        try:
            f.members = json.loads(out["members"].stdout).get("members", [])
        except ValueError:
            f.members = None
    unit_text = out["unit"].stdout if out["unit"].ok else ""
    referenced = sorted({v for tok in exec_tokens(unit_text) for v in [tok.split("=", 1)[-1]]
                         if v.startswith("/") and "," not in v} - set(paths))
    if referenced:
        found = remote.parse_modes(r.run(remote.modes_command(referenced)).stdout, referenced)
        f.referenced = {p: found[p] is not None for p in referenced}
    for p in paths:  # planned files are judged by hashes/modes; record them as referenced-present too
        if f.files.get(p) is not None:
            f.referenced.setdefault(p, True)
    return f


def judge_member(inv: Inventory, node: Node, facts: MemberFacts, files: list[File]) -> list[Result]:
    """Pure: one member's facts -> results (tested with hand-made facts)."""
    n = node.name
    res: list[Result] = []

    def add(check: str, status: str, detail: str, hint: str = "") -> None:
        res.append(Result(CHAPTER, check, n, status, detail, hint))

    add("unit-active", OK if facts.active == "active" else FAIL, f"etcd is {facts.active}",
        "see the journal findings below; `journalctl -u etcd` on the node")
    unit = next((x for x in files if x.path == UNIT_PATH), None)
    if unit is not None:
        got = facts.hashes.get(UNIT_PATH)
        if got is None:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} is missing", "run `invoke bootstrap-etcd`")
        elif got != unit.sha256:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} differs from the rendered unit (hand-edited?)",
                "run `invoke bootstrap-etcd` to push the rendered unit and restart the member")
        else:
            add("unit-matches-render", OK, f"{UNIT_PATH} equals the rendered unit")
    if facts.lint:
        add("unit-lint", FAIL, "systemd says: " + " | ".join(facts.lint.splitlines()[:3]),
            "a broken line continuation or quoting; push the rendered unit (`invoke bootstrap-etcd`)")
    else:
        add("unit-lint", OK, "systemd-analyze verify: no warnings")
    for f in files:
        got_mode = facts.files.get(f.path)
        if got_mode is None:
            add("files", FAIL, f"{f.path} is missing", "run `invoke bootstrap-etcd` to push it")
        elif got_mode != (f.mode, f.owner, f.group):
            add("files", FAIL, f"{f.path} is {got_mode[0]:04o} {got_mode[1]}:{got_mode[2]}, want "
                               f"{f.mode:04o} {f.owner}:{f.group}", "run `invoke bootstrap-etcd` to fix it")
        elif facts.hashes.get(f.path) != f.sha256:
            add("files", FAIL, f"{f.path} differs from what hardway planned",
                "run `invoke bootstrap-etcd` (after `invoke pki` if certificates changed)")
    missing_refs = [p for p, ok in facts.referenced.items() if not ok]
    for p in missing_refs:
        add("files", FAIL, f"the unit references {p}, which does not exist", "run `invoke bootstrap-etcd`")
    if not any(r.check == "files" for r in res):
        add("files", OK, f"{len(files)} files present with the planned content and mode")
    add("endpoint-health", OK if facts.healthy else FAIL,
        (facts.health.splitlines() or ["no answer"])[-1][:160],
        "" if facts.healthy else "the member is down or cannot reach quorum; see the other results")
    seen = False
    for pattern, cause, fix in SIGNATURES:
        m = re.search(pattern, facts.journal)
        if m:
            seen = True
            line = next(ln for ln in facts.journal.splitlines() if re.search(pattern, ln))
            add("journal", FAIL, f"{cause}: “{line.strip()[:140]}”", fix.format(data_dir=inv.etcd.data_dir))
    if not seen:
        add("journal", OK, "no known failure signature since the unit last started")
    return res


def judge_cluster(inv: Inventory, facts: dict[str, MemberFacts]) -> list[Result]:
    """Pure: cluster-wide results — membership and leadership."""
    res: list[Result] = []
    want = {n.name: (inv.etcd_peer_url(n), etcd_ids.expected_member_id(inv, n)) for n in inv.controllers}
    members = next((f.members for f in facts.values() if f.members is not None), None)
    if members is None:
        res.append(Result(CHAPTER, "members", "-", FAIL, "no member answered `member list`",
                          "the cluster has no quorum; start the stopped members (`invoke bootstrap-etcd`)"))
    else:
        got = {m.get("name") or f"(unstarted {int(m['ID']):x})": (",".join(m.get("peerURLs", [])), int(m["ID"]))
               for m in members}
        if got == want:
            res.append(Result(CHAPTER, "members", "-", OK,
                              f"member list = the inventory's {len(want)} controllers (names, peer URLs, IDs)"))
        else:
            extra = sorted(set(got) - set(want))
            missing = sorted(set(want) - set(got))
            differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
            res.append(Result(CHAPTER, "members", "-", FAIL,
                              f"member list differs from the inventory: extra {extra or '-'}, missing "
                              f"{missing or '-'}, different peer URL/ID {differ or '-'}",
                              "remove stale members with `etcdctl member remove`, add missing ones with "
                              "`member add`, or fix the inventory"))
    leaders = {f.status.get("leader") for f in facts.values() if f.status}
    leaders.discard(None)
    leaders.discard(0)
    answering = sum(1 for f in facts.values() if f.status)
    if len(leaders) == 1 and answering:
        leader = leaders.pop()
        name = next((n for n, (_, mid) in want.items() if mid == int(leader)), f"{int(leader):x}")
        res.append(Result(CHAPTER, "leader", "-", OK, f"exactly one leader: {name} ({answering} members agree)"))
    else:
        res.append(Result(CHAPTER, "leader", "-", FAIL,
                          f"{len(leaders)} leaders seen by {answering} answering members",
                          "no leader usually means no quorum or a disk too slow for elections "
                          "(`sync duration` in the journal)"))
    return res


def client_auth_results(inv: Inventory, state: PkiState, node: Node) -> list[Result]:
    """A client without a certificate, and one with a certificate from another CA, must be refused."""
    res: list[Result] = []
    host, port = str(node.address), 2379
    with tempfile.TemporaryDirectory(prefix="hardway-authcheck-") as tmp:
        foreign_cert, foreign_key = throwaway_client(Path(tmp), inv.key_algorithm)
        for label, cert in (("no client certificate", None), ("a certificate from another CA",
                                                               (foreign_cert, foreign_key))):
            outcome = _tls_request(host, port, state.cert("ca"), cert)
            if outcome == "refused":
                res.append(Result(CHAPTER, "client-auth", node.name, OK, f"a client with {label} is refused"))
            elif outcome == "unreachable":
                res.append(Result(CHAPTER, "client-auth", node.name, WARN,
                                  f"could not reach {host}:{port} from here to test a client with {label}",
                                  "run verify from a host that reaches the controllers' client port"))
            else:
                res.append(Result(CHAPTER, "client-auth", node.name, FAIL,
                                  f"a client with {label} was served: {outcome}",
                                  "the unit must pass --client-cert-auth and --trusted-ca-file; push the "
                                  "rendered unit (`invoke bootstrap-etcd`)"))
    return res


def _tls_request(host: str, port: int, ca: Path, client: tuple[Path, Path] | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # we test client auth, not the server's SAN (pki tests cover that)
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = tls.recv(200)
    except ssl.SSLError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "refused"
    except OSError:
        return "unreachable"
    if not data:
        return "refused"
    return data.decode(errors="replace").splitlines()[0]


def verify(inv: Inventory, state: PkiState, *, cache_dir: Path | None = None,
           connector: Connector = remote.connect) -> list[Result]:
    files = planned_files(inv, state, cache_dir)
    outcomes = remote.fan_out(inv, inv.controllers,
                              lambda r: gather_member(inv, r, files[r.node.name]), connector=connector)
    results: list[Result] = []
    facts: dict[str, MemberFacts] = {}
    for o in outcomes:
        if not o.ok or o.value is None:
            results.append(Result(CHAPTER, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                  "start the machine / fix SSH; the other members keep quorum only if a "
                                  "majority is up"))
            continue
        facts[o.node.name] = o.value
        results.extend(judge_member(inv, o.node, o.value, files[o.node.name]))
    results.extend(judge_cluster(inv, facts))
    # ask a member that is serving, so a stopped one does not turn this check into "unreachable"
    probe = next((n for n in inv.controllers if facts.get(n.name) and facts[n.name].healthy), inv.controllers[0])
    results.extend(client_auth_results(inv, state, probe))
    return results


def checks(inv: Inventory, state: PkiState, *, cache_dir: Path | None = None,
           connector: Connector = remote.connect) -> list[Check]:
    return [Check(CHAPTER, "etcd", "a healthy TLS etcd cluster matching the inventory",
                  lambda: verify(inv, state, cache_dir=cache_dir, connector=connector))]

