"""A lab's machines: network, overlay mount, own cgroup, systemd-nspawn; when a machine is ready
(strict SSH login and systemd ``running``); power-off and teardown.

Networking: a bridge ``hw-<tag>`` holding the subnet's .1 (the host is the jumpbox) and, per
node, a netns ``hw.<lab>.<node>`` with a veth (``hw-<tag>-<i>`` on the bridge, ``eth0`` inside)
carrying the node's address. Nothing is routed or NATed beyond the bridge.

Each step is idempotent, so a crashed run can be resumed or removed, and teardown finds what a
crashed run left by name (netns, links, cgroups), by command line (nspawn processes) and by the
mount table (overlays), never by assuming.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hardway import inventory, remote
from hardway.errors import HardwayError
from hardway.lab import cgroups, probes
from hardway.lab.addresses import DEFAULT_SUBNET, NODE_IFACE, LabLayout, LabNode, layout, load_layout
from hardway.lab.probes import Report, run

# --------------------------------------------------------------------------------------------
# Network, mount, machine


def ensure_bridge(p: LabLayout) -> None:
    if p.bridge not in probes.links():
        run(["ip", "link", "add", p.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
    run(["ip", "addr", "replace", f"{p.gateway}/{p.subnet.prefixlen}", "dev", p.bridge])
    run(["ip", "link", "set", p.bridge, "up"])


def ensure_node_network(p: LabLayout, node: LabNode) -> None:
    ns = p.netns(node)
    if ns not in probes.netns_list():
        run(["ip", "netns", "add", ns])
    inside = run(["ip", "-n", ns, "link", "show", NODE_IFACE], check=False).returncode == 0
    host_side = p.veth(node)
    links = probes.links()
    if not (inside and host_side in links):
        for stale in (host_side, host_side + "p"):
            if stale in links:
                run(["ip", "link", "del", stale], check=False)
        if inside:
            run(["ip", "-n", ns, "link", "del", NODE_IFACE], check=False)
        run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", host_side + "p"])
        run(["ip", "link", "set", host_side + "p", "netns", ns])
        run(["ip", "-n", ns, "link", "set", host_side + "p", "name", NODE_IFACE])
    run(["ip", "-n", ns, "addr", "replace", f"{node.address}/{p.subnet.prefixlen}", "dev", NODE_IFACE])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "link", "set", NODE_IFACE, "up"])
    run(["ip", "link", "set", host_side, "master", p.bridge, "up"])


def ensure_mounted(p: LabLayout, node: LabNode) -> None:
    merged = str(p.merged(node))
    if merged in probes.lab_mounts(p):
        return
    d = p.node_dir(node)
    opts = f"lowerdir=/,upperdir={d / 'upper'},workdir={d / 'work'}"
    run(["mount", "-t", "overlay", f"hw-{p.name}-{node.name}", "-o", opts, merged])


def nspawn_command(p: LabLayout, node: LabNode) -> list[str]:
    # CAP_NET_ADMIN (and NSPAWN_ENV's writable /proc/sys/net): a node manages its own network
    # namespace, as a machine would (pod routes, ip_forward, the bridge sysctls); nspawn grants
    # neither with --network-namespace-path. Both reach only the node's own namespace.
    return [
        "systemd-nspawn", "--boot", f"--directory={p.merged(node)}",
        f"--machine={p.machine(node)}", f"--hostname={node.name}",
        "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{p.netns(node)}",
        "--capability=CAP_NET_ADMIN",
        "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
    ]


NSPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}  # /proc/sys/net writable, the rest of /proc/sys not


def launch(p: LabLayout, node: LabNode) -> int:
    """Start the node's machine in the background, in its own cgroup and session (reparented to
    init, so it outlives this process); return the systemd-nspawn pid."""
    running = probes.nspawn_processes(p).get(node.name)
    if running:
        return running
    groups = cgroups.node_cgroups(p.name, node.name)
    if cgroups.populated(groups):  # a killed nspawn's machine lives on without it: not ours to reuse
        power_off(p, [node.name], timeout=0)
    procs = cgroups.create(p.name, node.name)
    log_path = p.console_log(node)
    with log_path.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {node.name}\n".encode())
        out.flush()
        argv = cgroups.enter_command(procs, ["setsid", "--fork", *nspawn_command(p, node)])
        forked = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False,
                                env={**os.environ, **NSPAWN_ENV})
    if forked.returncode != 0:
        raise HardwayError(f"node {node.name}: cannot start systemd-nspawn (exit {forked.returncode}); see {log_path}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = probes.nspawn_processes(p).get(node.name)
        if pid:
            return pid
        time.sleep(0.02)
    raise HardwayError(f"node {node.name}: systemd-nspawn did not start; see {log_path}")


def start(p: LabLayout, node: LabNode) -> int:
    ensure_node_network(p, node)
    ensure_mounted(p, node)
    return launch(p, node)


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # the console's colours
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


# --------------------------------------------------------------------------------------------
# Ready: systemd `running` and a strict SSH login


def in_node(nspawn_pid: int, argv: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the node (all its namespaces), as its root."""
    init = probes.init_pid(nspawn_pid)
    if init is None:
        return subprocess.CompletedProcess(argv, 1, "", "no init")
    return run(["nsenter", f"--target={init}", "--all", *argv], check=False, timeout=timeout)


def system_state(nspawn_pid: int, wait: float = 0.0) -> str:
    """``systemctl is-system-running`` inside the node; with ``wait``, first wait up to that many
    seconds for its boot to finish."""
    argv = ["systemctl", "is-system-running"] + (["--wait"] if wait else [])
    try:
        res = in_node(nspawn_pid, argv, timeout=max(wait, 15.0))
    except HardwayError:
        return "starting"  # still booting when the wait ran out
    out = (res.stdout or "").strip()
    if out:
        return out.splitlines()[-1]
    err = (res.stderr or "").strip().splitlines()
    return err[-1] if err else "?"


def failed_units(nspawn_pid: int) -> str:
    """The node's failed units and the last journal line of the first one, in one line."""
    res = in_node(nspawn_pid, ["systemctl", "--failed", "--no-legend", "--plain"])
    units = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    if not units:
        return "no failed unit listed"
    last = in_node(nspawn_pid, ["journalctl", "-b", "-u", units[0], "-n", "1", "-o", "cat", "--no-pager"])
    return f"failed: {', '.join(units)} ({units[0]}: {last.stdout.strip() or 'no journal'})"


def ssh_check(inv: inventory.Inventory, node: str) -> str | None:
    """None if root can log in to the node and run a command, with hardway's own strict host-key
    checking (remote.connect), else why not."""
    try:
        r = remote.connect(inv, inv.node(node))
    except HardwayError as exc:
        return _without_node(str(exc), node)
    try:
        res = r.run("true", check=False, timeout=inv.ssh.connect_timeout)
        return None if res.ok else f"`true` exited {res.exit_code}"
    except HardwayError as exc:
        return _without_node(str(exc), node)
    finally:
        r.close()


def _without_node(message: str, node: str) -> str:
    """'controller-0 (10.77.0.10:22): unreachable (...)' -> 'unreachable (...)'."""
    head, sep, rest = message.partition(": ")
    return rest if sep and head.split(" ")[0] == node else message


BOOTED = ("running", "degraded", "maintenance", "stopping")


def wait_ready(p: LabLayout, nodes: list[LabNode], timeout: float) -> None:
    """Wait until every node's systemd says ``running`` and root logs in over strict SSH."""
    deadline = time.monotonic() + timeout
    inv = inventory.load(p.inventory_path)
    nspawn = probes.nspawn_processes(p)

    def wait(node: LabNode) -> str | None:
        pid = nspawn.get(node.name)
        state = "not started"
        while pid is not None and probes.alive(pid) and time.monotonic() < deadline:
            state = system_state(pid, wait=max(0.1, deadline - time.monotonic()))
            if state in BOOTED:
                break
            time.sleep(0.05)  # systemd not reachable yet
        if pid is None or not probes.alive(pid):
            return f"its machine exited: {log_tail(p.console_log(node))}"
        if state == "degraded":
            return f"systemd is degraded, {failed_units(pid)}"
        if state != "running":
            return f"systemd is {state!r}, not running, after {timeout:.0f} s"
        why = ssh_check(inv, node.name)
        while why is not None and time.monotonic() < deadline:
            time.sleep(0.1)
            why = ssh_check(inv, node.name)
        return None if why is None else f"not SSH-ready after {timeout:.0f} s ({why})"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(nodes)))) as pool:
        problems = [(n, why) for n, why in zip(nodes, pool.map(wait, nodes), strict=True) if why]
    if problems:
        node, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HardwayError(
            f"lab {p.name}: node {node.name}: {why}{more}; console: {p.console_log(node)}; "
            f"`invoke lab.down --name {p.name}` removes the lab"
        )


# --------------------------------------------------------------------------------------------
# Power-off and teardown


def power_off(p: LabLayout, nodes: Iterable[str], timeout: float) -> tuple[list[str], list[str]]:
    """Power machines off; return once every process of theirs has exited, with the nodes that
    had to be killed and those found orphaned.

    SIGTERM makes nspawn send the container's PID 1 its poweroff signal. A PID 1 that is still
    booting may not handle it yet (the kernel drops it), so the poweroff signal is repeated to
    PID 1 every second. A machine is off when its cgroup is empty: nspawn and every process of the
    machine gone. After ``timeout`` a second SIGTERM (nspawn: "immediate termination"), then
    SIGKILL to everything in the cgroup. An orphaned machine, whose nspawn was killed (its
    processes live on without it), has nobody to power it off: it is killed at once.
    """
    wanted = list(nodes)
    nspawn = {n: pid for n, pid in probes.nspawn_processes(p).items() if n in wanted}
    groups = {n: cgroups.node_cgroups(p.name, n) for n in wanted}

    def running(node: str) -> bool:
        pid = nspawn.get(node)
        return (pid is not None and probes.alive(pid)) or cgroups.populated(groups[node])

    todo = [n for n in wanted if running(n)]
    orphaned = [n for n in todo if n not in nspawn]
    for node in todo:
        if node in orphaned:
            cgroups.kill(groups[node])
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn[node], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    next_nudge = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(running(n) for n in todo):
        if time.monotonic() >= next_nudge:
            next_nudge += 1.0
            for pid in nspawn.values():
                init = probes.init_pid(pid) if probes.alive(pid) else None
                if init is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(init, signal.SIGRTMIN + 4)  # systemd: SIGRTMIN+4 = poweroff
        time.sleep(0.02)
    killed = [n for n in todo if running(n) and n not in orphaned]
    for force, wait in ((False, 5.0), (True, 10.0)):
        if not any(running(n) for n in todo):
            break
        for node in todo:
            if force:
                cgroups.kill(groups[node])
            with contextlib.suppress(ProcessLookupError, KeyError):
                os.kill(nspawn[node], signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(running(n) for n in todo):
            time.sleep(0.02)
    still = {n: sorted(cgroups.members(groups[n]) | ({nspawn[n]} if n in nspawn else set()))
             for n in todo if running(n)}
    if still:
        node, pids = next(iter(still.items()))
        names = ", ".join(f"{pid} ({probes.proc_name(pid)})" for pid in pids[:5])
        raise HardwayError(f"lab {p.name}: node {node}: processes still running after SIGKILL: {names}; "
                           "they may be stuck in the kernel (state D); `invoke lab.down` again once they exit")
    return killed, orphaned


def wait_reaped(p: LabLayout, processes: dict[int, int | None], timeout: float) -> None:
    """Wait until ``processes`` (pid -> start time) have left the process table.

    systemd-nspawn is started with ``setsid --fork``, so its parent is the host's PID 1, and once it
    exits it stays a zombie until PID 1 reaps it (on this project's machines ~1.5 s later). ``down``
    returns only after that: nothing of the lab is left, not even in ``ps``."""
    deadline = time.monotonic() + timeout
    left = {pid: t for pid, t in processes.items() if t is not None}
    while left:
        left = {pid: t for pid, t in left.items() if probes.start_time(pid) == t}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if left:
        pid = min(left)
        parent = probes.parent_pid(pid)
        raise HardwayError(
            f"lab {p.name}: {len(left)} of its machines' processes, e.g. {pid} ({probes.proc_name(pid)}), have "
            f"exited but are still zombies after {timeout:.0f} s: their parent, pid {parent} "
            f"({probes.proc_name(parent) if parent else '?'}), does not reap them"
        )


def umount(point: str) -> str:
    res = run(["umount", point], check=False)
    if res.returncode == 0:
        return "unmounted"
    run(["umount", "--lazy", point])
    return "lazily unmounted (was busy)"


def leftovers(p: LabLayout) -> list[str]:
    """Whatever of the lab is on the host: machines, mounts, netns, links, cgroups, state."""
    found = [f"machine {node} (pid {pid})" for node, pid in probes.nspawn_processes(p).items()]
    found += [f"mount {m}" for m in probes.lab_mounts(p)]
    found += [f"netns {ns}" for ns in probes.lab_netns(p)]
    found += [f"link {link}" for link in probes.lab_links(p)]
    found += [f"cgroup {group}" for group in cgroups.lab_cgroups(p.name)]
    if p.state_dir.exists():
        found.append(f"state {p.state_dir}")
    return found


def existing_layout(name: str, state_root: Path) -> LabLayout:
    """The recorded layout of lab ``name``; a one-line error if there is none."""
    p = load_layout(name, state_root)
    if p is None:
        left = leftovers(layout(name, 1, 0, DEFAULT_SUBNET, state_root)) if os.geteuid() == 0 else []
        if left:
            raise HardwayError(f"no lab named {name!r}, but a crashed run left {', '.join(left[:3])}"
                               f"{' ...' if len(left) > 3 else ''}; `invoke lab.down --name {name}` removes it")
        raise HardwayError(f"no lab named {name!r} (nothing in {state_root / name}); start it with "
                           f"`invoke lab.up --name {name}`")
    return p


@dataclass
class Removal:
    """What ``teardown`` removed, by kind."""

    lab: str
    machines: list[str] = field(default_factory=list)  # nodes whose machine was powered off
    killed: list[str] = field(default_factory=list)  # of those, the ones that had to be killed
    orphaned: list[str] = field(default_factory=list)  # found running without their nspawn: killed
    mounts: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    state_dir: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.machines or self.mounts or self.netns or self.links or self.cgroups or self.state_dir)

    def summary(self) -> str:
        if not self:
            return f"lab {self.lab}: nothing to remove"
        counts = [(len(self.machines), "machine"), (len(self.mounts), "mount"), (len(self.netns), "netns"),
                  (len(self.links), "link"), (len(self.cgroups), "cgroup")]
        parts = [f"{n} {kind}{'s' if n > 1 and kind != 'netns' else ''}" for n, kind in counts if n]
        if self.state_dir is not None:
            parts.append("state dir")
        notes = []
        if self.killed:
            notes.append(f"killed, as they did not power off in time: {', '.join(self.killed)}")
        if self.orphaned:
            notes.append(f"killed, as their systemd-nspawn was gone: {', '.join(self.orphaned)}")
        return f"lab {self.lab}: removed {', '.join(parts)}" + (f" ({'; '.join(notes)})" if notes else "")


def teardown(p: LabLayout, report: Report) -> Removal:
    """Remove everything of the lab on this host; return only once all of it is gone."""
    removed = Removal(p.name)
    nspawn = probes.nspawn_processes(p)
    with_cgroup = {g.name[len(f"hw.{p.name}."):] for g in cgroups.lab_cgroups(p.name)}
    # nspawn's lock on each machine's root dir, named by the overlay's device and inode: a
    # SIGKILLed nspawn leaves it behind.
    locks = []
    for point in probes.lab_mounts(p):
        with contextlib.suppress(OSError):
            st = os.stat(point)
            locks.append(Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}"))
    on = sorted(set(nspawn) | {n for n in with_cgroup if cgroups.populated(cgroups.node_cgroups(p.name, n))})
    pids = set(nspawn.values()) | cgroups.members(cgroups.lab_cgroups(p.name))
    processes = {pid: probes.start_time(pid) for pid in pids}
    removed.killed, removed.orphaned = power_off(p, on, timeout=20.0)
    removed.machines = on
    for node in removed.killed:
        report(f"lab {p.name}: {node} did not power off in time and was killed; its console ended: "
               f"{log_tail(p.console_log(node), 6)}")
    removed.cgroups = [str(g) for g in cgroups.remove(cgroups.lab_cgroups(p.name))]
    for lock in locks:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    for point in probes.lab_mounts(p):
        umount(point)
        removed.mounts.append(point)
    removed.links = probes.lab_links(p)  # deleting a netns takes its veth pair along
    for ns in probes.lab_netns(p):
        run(["ip", "netns", "delete", ns], check=False)
        if ns in probes.netns_list():
            with contextlib.suppress(OSError):
                os.unlink(f"/run/netns/{ns}")
        removed.netns.append(ns)
    for link in sorted(probes.lab_links(p), key=lambda s: s == p.bridge):  # veths first, then the bridge
        run(["ip", "link", "del", link], check=False)
    for leftover in glob.glob(f"/run/systemd/nspawn/*/hw.{p.name}.*"):
        with contextlib.suppress(OSError):
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover)
            else:
                os.unlink(leftover)
    left = probes.lab_mounts(p)
    if left:
        raise HardwayError(f"lab {p.name}: still mounted: {', '.join(left)}; not deleting {p.state_dir}")
    if p.state_dir.exists():
        shutil.rmtree(p.state_dir)
        removed.state_dir = p.state_dir
    wait_reaped(p, processes, timeout=10.0)
    still = leftovers(p)
    if still:
        raise HardwayError(f"lab {p.name}: could not remove: {', '.join(still)}")
    return removed
