"""Each machine in a cgroup of its own: ``hw.<lab>.<node>``.

``systemd-nspawn --keep-unit --register=no`` builds a machine's cgroups (``supervisor/`` for
itself, ``payload/`` for the machine's systemd) under the cgroup it was started in. Started
straight from the jumpbox, every node of every lab lands in the same one, so all their systemds
share one ``payload/system.slice/<unit>`` tree: when node A's short-lived unit finishes, A's
systemd removes the unit's cgroup just as node B attaches its own copy of that unit to it, and
B's unit fails with ``Failed to attach to cgroup /system.slice/<unit>: No such file or
directory`` (status=219/CGROUP): B boots ``degraded``. Nodes booting in parallel run the same
early units at the same moment (systemd-sysusers, systemd-tmpfiles-setup, systemd-user-sessions,
systemd-update-utmp-runlevel), so one ``lab.up`` in a few had one.

So nspawn is started inside the node's own cgroup, in each hierarchy the machine's systemd
uses (the ``name=systemd`` v1 hierarchy and cgroup2). That cgroup is also the truth about which
processes belong to a machine: every one of them, also one orphaned by a killed nspawn, is in it
until it has exited. Teardown waits for it to empty, then removes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hardway.errors import HardwayError
from hardway.lab.addresses import machine_name, owned_by
from hardway.lab.probes import parse_mountinfo_options

MOUNTINFO = Path("/proc/self/mountinfo")


def systemd_hierarchies(mountinfo: str) -> list[Path]:
    """Mount points of the hierarchies a machine's systemd uses, each kind once (the first mount):
    cgroup2 and the v1 ``name=systemd`` one."""
    seen: dict[str, Path] = {}
    for point, fstype, options in parse_mountinfo_options(mountinfo):
        if fstype == "cgroup2":
            seen.setdefault("cgroup2", Path(point))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            seen.setdefault("name=systemd", Path(point))
    return list(seen.values())


def hierarchies() -> list[Path]:
    """This host's: where machine cgroups are made."""
    return systemd_hierarchies(MOUNTINFO.read_text())


def node_cgroups(lab: str, node: str) -> list[Path]:
    """The node's cgroup in each hierarchy (whether it exists or not)."""
    return [h / machine_name(lab, node) for h in hierarchies()]


BLKIO = Path("/sys/fs/cgroup/blkio")  # v1: where the slow-disk drill throttles a machine (lab/diskio.py)


def lab_cgroups(lab: str) -> list[Path]:
    """Every existing cgroup of lab ``lab``, in every hierarchy (the v1 blkio one too)."""
    found = []
    for h in [*hierarchies(), BLKIO]:
        with contextlib.suppress(OSError):
            found += [h / entry for entry in sorted(os.listdir(h)) if owned_by(lab, entry) and (h / entry).is_dir()]
    return found


def create(lab: str, node: str) -> list[Path]:
    """Make the node's cgroups; return their ``cgroup.procs`` files (see ``enter_command``)."""
    groups = node_cgroups(lab, node)
    if not groups:
        raise HardwayError("no cgroup hierarchy for systemd is mounted (neither cgroup2 nor name=systemd in "
                           f"{MOUNTINFO}); the lab's machines need one")
    for group in groups:
        try:
            group.mkdir(exist_ok=True)
        except OSError as exc:
            raise HardwayError(f"cannot make the cgroup {group} for node {node}: {exc.strerror or exc}; the lab "
                               "starts each machine in a cgroup of its own") from None
    return [g / "cgroup.procs" for g in groups]


def enter_command(procs_files: list[Path], argv: list[str]) -> list[str]:
    """``argv`` run from inside the cgroups whose ``cgroup.procs`` are given: a shell moves itself
    there (writing 0 moves the writer) and execs ``argv``, so everything it starts stays there."""
    script = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["sh", "-c", script, "sh", *map(str, procs_files), "--", *argv]


def members(groups: list[Path]) -> set[int]:
    """Pids of every process in ``groups`` and their sub-cgroups."""
    pids: set[int] = set()
    for group in groups:
        for dirpath, _dirs, _files in os.walk(group):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def populated(groups: list[Path]) -> bool:
    """True while any process is in ``groups`` (cgroup2 says so in one file; v1 needs a walk)."""
    for group in groups:
        try:
            events = (group / "cgroup.events").read_text()
        except FileNotFoundError:
            continue
        except OSError:
            break
        return "populated 1" in events
    return bool(members(groups))


def kill(groups: list[Path]) -> None:
    """SIGKILL every process in ``groups`` (cgroup2's cgroup.kill where there is one)."""
    for group in groups:
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")
    for pid in members(groups):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(groups: list[Path]) -> list[Path]:
    """Remove ``groups`` and the sub-cgroups the machine left, deepest first; return what was
    removed. A cgroup that still holds a process stays (rmdir says EBUSY) and is left out."""
    removed = []
    for group in groups:
        if not group.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(group, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not group.exists():
            removed.append(group)
    return removed
