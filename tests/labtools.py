"""Helpers for lab tests: hardway's own SSH to a node, and looking at the host the way a person
would (ps, /proc, mount table, ip, /sys/fs/cgroup) for whatever a lab left behind."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from hardway import lab as lab_lib
from hardway import remote

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def connect(the_lab: lab_lib.Lab, node: str, known_hosts: Path | None = None) -> Iterator[remote.Remote]:
    """hardway's own remote layer (strict host keys from the inventory's known_hosts)."""
    inv = the_lab.inventory
    if known_hosts is not None:
        inv = dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, known_hosts=known_hosts))
    r = remote.connect(inv, inv.node(node))
    try:
        yield r
    finally:
        r.close()


def run(r: remote.Remote, cmd: str) -> str:
    return r.run(cmd, check=False).stdout.strip()


def leftovers(name: str, subnet: ipaddress.IPv4Network | None = None) -> list[str]:
    """Whatever of lab ``name`` is still on the host, found the way a person would look."""
    state_dir = lab_lib.STATE_ROOT / name
    found = []
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    found += [f"process {ln.strip()}" for ln in ps.splitlines()
              if "systemd-nspawn" in ln and f"{state_dir}/" in ln]
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {ln}" for ln in mounts.splitlines() if str(state_dir) in ln]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"netns {ln}" for ln in netns.splitlines() if ln.startswith(f"hw.{name}.")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    pattern = lab_lib.link_pattern(name)
    for ln in links.splitlines():
        ifname = ln.split(":")[1].strip().split("@")[0]
        if pattern.match(ifname):
            found.append(f"link {ifname}")
    if subnet is not None:
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        found += [f"route {ln}" for ln in routes.splitlines() if ln.startswith(str(subnet))]
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    found += [f"nspawn dir {p}" for p in Path("/run/systemd/nspawn").glob(f"*/hw.{name}.*")]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/hw.{name}.*")]
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def machine_processes(the_lab: lab_lib.Lab) -> dict[int, str]:
    """Every process of the lab's machines: its systemd-nspawns and everything in the machines'
    PID namespaces, as pid -> start time (pids are reused; the pair names one process)."""
    nspawn = set(the_lab.pids().values())
    namespaces = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (fields := _stat(int(pid))) and int(fields[1]) in nspawn:  # nspawn's child: PID 1
            with contextlib.suppress(OSError):
                namespaces.add(os.readlink(f"/proc/{pid}/ns/pid"))
    found = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        with contextlib.suppress(OSError):
            if pid in nspawn or os.readlink(f"/proc/{pid}/ns/pid") in namespaces:
                fields = _stat(pid)
                if fields:
                    found[pid] = fields[19]
    return found


def still_in_process_table(processes: dict[int, str]) -> list[str]:
    """Those of ``processes`` still in the process table (zombies included), with their state."""
    left = []
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields and fields[19] == started:
            comm = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else "?"
            left.append(f"{pid} ({comm}, state {fields[0]})")
    return left


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
