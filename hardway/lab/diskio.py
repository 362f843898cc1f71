"""A slow disk for one lab node: the block-I/O throttle of the machine's cgroup (the slow-disk drill).

A lab node's disk is an overlayfs upper dir on the host's own filesystem, so there is no device of
the node's to slow. What can be slowed is the node's writes: every process of the machine lives in
its cgroup (``hw.<lab>.<node>``, see ``cgroups``), and the kernel throttles that cgroup's writes to
the host's disk, counted in I/O operations per second. A write-back started by ``fdatasync`` is
issued by the syncing process, so it is throttled too: at 10 write IOPS one fdatasync takes about
half a second (each needs a data block and a journal commit), where this host's disk takes 0.3 ms.

- cgroup v1 (this project's hosts): the ``blkio`` hierarchy has no machine cgroups, so one is made
  there (``blkio/hw.<lab>.<node>``), given ``blkio.throttle.write_iops_device``, and every process of
  the machine is moved into it; what they start later is born there. Teardown removes it with the
  machine's other cgroups (``cgroups.lab_cgroups``).
- cgroup2 with the ``io`` controller: ``io.max`` (``wiops=``) on the machine's own cgroup.

Without either, or on a filesystem with no block device under it (tmpfs, a btrfs subvolume's
anonymous device), ``throttle`` refuses with one line saying why.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hardway.errors import HardwayError
from hardway.lab import cgroups
from hardway.lab.addresses import LabLayout, machine_name

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_FILE = "blkio.throttle.write_iops_device"


def disk_of(path: Path) -> str:
    """``MAJ:MIN`` of the whole disk that holds ``path`` (throttles name disks, not partitions)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysfs = Path("/sys/dev/block") / dev
    if not sysfs.exists():
        raise HardwayError(f"cannot slow {path}: it is on a filesystem without a block device ({dev}: tmpfs, or a "
                           "btrfs subvolume's anonymous device), and the kernel throttles only block devices")
    if (sysfs / "partition").exists():
        return (sysfs.resolve().parent / "dev").read_text().strip()
    return dev


def _v1_hierarchy() -> Path | None:
    blkio = CGROUP_ROOT / "blkio"
    return blkio if (blkio / V1_FILE).exists() else None


def _v2_group(p: LabLayout, node: str) -> Path | None:
    for group in cgroups.node_cgroups(p.name, node):
        if (group / "io.max").exists():
            return group
    return None


def throttle(p: LabLayout, node: str, write_iops: int) -> str:
    """Limit node ``node``'s writes to its disk to ``write_iops`` per second; returns how (one line)."""
    disk = disk_of(p.upper(node))
    v2 = _v2_group(p, node)
    if v2 is not None:
        (v2 / "io.max").write_text(f"{disk} wiops={write_iops}\n")
        return f"io.max {disk} wiops={write_iops} on {v2}"
    v1 = _v1_hierarchy()
    if v1 is None:
        raise HardwayError("cannot slow a lab node's disk here: neither the cgroup v1 blkio hierarchy nor cgroup2's "
                           "io controller is available on this host")
    group = v1 / machine_name(p.name, node)
    group.mkdir(exist_ok=True)
    try:
        (group / V1_FILE).write_text(f"{disk} {write_iops}\n")
    except OSError:  # the kernel refused the limit: no empty group left to look throttled
        group.rmdir()
        raise
    machine = cgroups.node_cgroups(p.name, node)
    for _ in range(3):  # a process forked while we move the others: catch it on the next pass
        for pid in sorted(cgroups.members(machine) - _procs(group)):
            with contextlib.suppress(ProcessLookupError, OSError):
                (group / "cgroup.procs").write_text(f"{pid}\n")
    return f"{V1_FILE} {disk} {write_iops} on {group}"


def _procs(group: Path) -> set[int]:
    try:
        return {int(x) for x in (group / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def throttled(p: LabLayout, node: str) -> bool:
    v2 = _v2_group(p, node)
    if v2 is not None:
        limits = (v2 / "io.max").read_text()
        return "wiops=" in limits and "wiops=max" not in limits
    v1 = _v1_hierarchy()
    return v1 is not None and (v1 / machine_name(p.name, node)).is_dir()


def unthrottle(p: LabLayout, node: str) -> bool:
    """Take the limit off again (processes go back to the hierarchy's root); True if there was one."""
    v2 = _v2_group(p, node)
    if v2 is not None:
        text = (v2 / "io.max").read_text()
        for line in text.splitlines():
            with contextlib.suppress(OSError):
                (v2 / "io.max").write_text(f"{line.split()[0]} wiops=max\n")
        return "wiops=" in text and "wiops=max" not in text
    v1 = _v1_hierarchy()
    if v1 is None:
        return False
    group = v1 / machine_name(p.name, node)
    if not group.is_dir():
        return False
    for _ in range(3):
        for pid in sorted(_procs(group)):
            with contextlib.suppress(ProcessLookupError, OSError):
                (v1 / "cgroup.procs").write_text(f"{pid}\n")
    with contextlib.suppress(OSError):
        group.rmdir()
    return True
