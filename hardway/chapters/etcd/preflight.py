"""The etcd chapter's preflight: facts from each controller, judged by a pure function.

Refuses to touch anything when the binary does not fit, a port is taken by something else, or a
data dir belongs to another cluster; measures the disk where the data will live.
"""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hardway.chapters.base import Finding
from hardway.chapters.etcd import cluster, datadir
from hardway.chapters.etcd.files import BINARIES, UNIT, UNIT_PATH
from hardway.checks import FAIL, OK, WARN
from hardway.errors import HardwayError
from hardway.facts import ARCH, LISTENERS, Fact, FactOutput, FactValues, unit_states
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN
from hardway.systemd import unit_flags

FSYNC_P99_LIMIT_MS = 10.0  # etcd's hardware guide: fdatasync p99 under 10 ms
PORTS = (2379, 2380)

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l", 0xF3: "riscv64", 0x15: "ppc64le",
                0x16: "s390x", 0x03: "i686"}


def elf_arch(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"), "unknown")


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


def jumpbox_findings(inv: Inventory, files: dict[str, list[File]]) -> list[Finding]:
    """The binaries being distributed: present, ELF, and (when they run here) accepting every flag."""
    findings: list[Finding] = []
    sample = files[inv.controllers[0].name]
    for name in BINARIES:
        if not any(f.path == f"{BIN}/{name}" for f in sample):
            src = inv.binaries.get(name)
            findings.append(Finding("-", FAIL, f"binaries.{name} is not available"
                                    + (f" ({src.url} not fetched)" if src and src.url else
                                       f" ({src.path} missing)" if src and src.path else
                                       " (not in the inventory)")
                                    + f"; add it to {inv.path} under binaries"))
    etcd_file = next((f for f in sample if f.path == f"{BIN}/etcd"), None)
    if etcd_file is None or etcd_file.source is None:
        return findings
    binary_arch = elf_arch(etcd_file.source)
    if binary_arch is None:
        findings.append(Finding("-", FAIL, f"binaries.etcd: {etcd_file.source} is not an ELF binary"))
    elif binary_arch == platform.machine():
        version, helptext = binary_help(etcd_file.source)
        unit = next(f for f in sample if f.path == UNIT_PATH)
        bad = unknown_flags(unit_flags(unit.data().decode()), helptext)
        for flag in bad:
            findings.append(Finding("-", FAIL, f"the unit passes {flag}, which {etcd_file.source} ({version}) does "
                                               "not accept; use an etcd release that has it or drop the flag"))
        if not bad:
            findings.append(Finding("-", OK, f"{version}: accepts every flag in the unit"))
    else:
        findings.append(Finding("-", WARN, f"the etcd binary is {binary_arch}: its flags cannot be asked on this "
                                           "jumpbox and were not checked"))
    return findings


# --- facts -----------------------------------------------------------------------------------

FSYNC_PROBE = r"""
import os, sys, time
d = sys.argv[1]
path = os.path.join(d, ".hardway-fsync-probe")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
buf = b"x" * 2300  # etcd's fio recipe: 2300-byte sequential writes, fdatasync after each
lat = []
stop = time.monotonic() + 2.0  # a slow disk must not make the probe slow: 2 s, once 10 samples are in
try:
    for _ in range(int(sys.argv[2])):
        os.write(fd, buf)
        t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
        if len(lat) >= 10 and time.monotonic() > stop:
            break
finally:
    os.close(fd); os.unlink(path)
lat.sort()
print("%.3f" % (lat[int(len(lat) * 0.99) - 1] * 1000))
"""


def _p99(out: FactOutput) -> float | None:
    if not out.ok:
        return None  # no python3 on the node (exit 99)
    return float(out.stdout.strip().splitlines()[-1])


def fsync_p99(data_dir: str, samples: int = 300) -> Fact[float | None]:
    """fdatasync p99 in ms where the data will live: the data dir if it exists, else its parent."""
    parent = shlex.quote(data_dir.rsplit("/", 1)[0] or "/")
    return Fact("fsync_p99", f"d={shlex.quote(data_dir)}; [ -d \"$d\" ] || d={parent}; "
                             "command -v python3 >/dev/null || exit 99; "
                             f"mkdir -p \"$d\" && python3 -c {shlex.quote(FSYNC_PROBE)} \"$d\" {samples}",
                _p99, (data_dir, samples), alone=True)  # other work on the node would disturb the figure


def node_facts(inv: Inventory, node: Node) -> list[Fact]:
    return [ARCH, LISTENERS, fsync_p99(inv.etcd.data_dir), *cluster.facts(inv, node)]


# --- judging ---------------------------------------------------------------------------------


@dataclass
class NodeFacts:
    """What preflight learns about one controller on its own."""

    arch: str = ""
    listeners: dict[int, str] = field(default_factory=dict)  # port -> "pid/command" holding it
    etcd_main_pid: str = "0"
    data: datadir.DataDir = field(default_factory=datadir.DataDir)
    fsync_p99_ms: float | None = None


def node_facts_from(inv: Inventory, node: Node, values: FactValues) -> NodeFacts:
    held = values[LISTENERS]
    return NodeFacts(
        arch=values[ARCH],
        listeners={p: f"{pid}/{cmd}" for p, (pid, cmd) in held.items() if p in PORTS},
        etcd_main_pid=str(values[unit_states((UNIT,))][UNIT].main_pid),
        data=datadir.read(values, inv),
        fsync_p99_ms=values[fsync_p99(inv.etcd.data_dir)],
    )


def fsync_finding(inv: Inventory, node: str, p99: float | None) -> Finding:
    """The disk figure, printed for every node with etcd's criterion."""
    where = inv.etcd.data_dir
    if p99 is None:
        return Finding(node, WARN, "no python3 on the node: disk fdatasync latency not measured")
    if p99 >= FSYNC_P99_LIMIT_MS:
        return Finding(node, WARN, f"fdatasync p99 {p99:.2f} ms in {where} (etcd wants < {FSYNC_P99_LIMIT_MS:.0f} "
                                   "ms): expect slow commits and lost leaders; put it on an SSD")
    return Finding(node, OK, f"fdatasync p99 {p99:.2f} ms in {where} (etcd wants < {FSYNC_P99_LIMIT_MS:.0f} ms)")


def judge_preflight(inv: Inventory, node: Node, facts: NodeFacts, binary_arch: str | None) -> list[Finding]:
    """Pure: one node's own facts -> findings (whose data is current is judged across nodes, below)."""
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
    if facts.data.others:
        d = inv.etcd.data_dir
        out.append(Finding(name, FAIL, f"{d} is not empty and holds no etcd member "
                                       f"({', '.join(facts.data.others[:5])}); move it aside (on {name}: "
                                       f"`{datadir.move_aside(d)}`) or set etcd.data_dir in the inventory"))
    out.append(fsync_finding(inv, name, facts.fsync_p99_ms))
    return out


@dataclass
class Together:
    findings: list[Finding]
    join: list[str]  # controllers to join to the running cluster as new members (after the others are up)


def judge_together(inv: Inventory, view: cluster.ClusterView) -> Together:
    """Pure: whose data is this cluster's, and how each member comes up.

    - a data dir of another cluster, or of a removed member: refused, naming the fix for THAT node;
    - an empty data dir while the others serve (a reset node, a replaced disk): it joins as a new
      member (member add, --initial-cluster-state=existing), never under its old identity;
    - some empty and some holding this cluster's data, and those are fewer than a quorum: refused
      before anything starts: started together, the holders' copy would silently become the cluster's.
    """
    out: list[Finding] = []
    verdicts = view.verdicts()
    serving = bool(view.in_cluster)
    by_name = {n.name: n for n in inv.controllers}
    for v in verdicts.values():
        if v.kind in (datadir.STALE, datadir.UNREADABLE):
            out.append(Finding(v.node, FAIL, f"{v.detail}; {datadir.stale_fix(inv, by_name[v.node], serving)}"))
        elif v.kind == datadir.OURS:
            out.append(Finding(v.node, OK, f"{v.detail}: kept"))
    holders = [n for n, v in verdicts.items() if v.kind == datadir.OURS]
    empty = [n for n, v in verdicts.items() if v.kind == datadir.EMPTY and view[n].active != "active"]
    join: list[str] = []
    if empty and (serving or len(holders) >= cluster.quorum(len(inv.controllers))):
        join = empty
        why = "the other members serve" if serving else f"{', '.join(holders)} hold this cluster's data"
        for n in empty:
            out.append(Finding(n, OK, f"{verdicts[n].detail}; {why}: it joins them as a new member (member add, "
                                      "--initial-cluster-state=existing) once they are up"))
    elif empty and holders:
        holds, wiped = ", ".join(holders), ", ".join(empty)
        d = inv.etcd.data_dir
        out.append(Finding("-", FAIL, f"{holds} hold(s) this cluster's data but {wiped} have none, and no member "
                                      f"serves: started together, {holds}'s copy would silently become the "
                                      f"cluster's (what only the wiped members had is lost). To start empty: on "
                                      f"{holds}, `systemctl stop etcd; {datadir.move_aside(d)}`, then "
                                      "`invoke bootstrap-etcd`; to keep data, restore a snapshot: "
                                      "`invoke etcd.restore SNAPSHOT`"))
    return Together(out, join)
