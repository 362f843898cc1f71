"""A lab's life: up (boot it, or finish booting it), get, stop/start one node, down."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hardway import localfs
from hardway.errors import HardwayError
from hardway.lab import cgroups, image, machine, node_status, probes
from hardway.lab.addresses import (
    DEFAULT_CONTROLLERS,
    DEFAULT_LOADBALANCERS,
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    DEFAULT_WORKERS,
    NODE_IFACE,
    STATE_ROOT,
    LabLayout,
    check_name,
    iface_tag,
    layout,
    load_layout,
    recorded_labs,
    write_inventory,
    write_record,
)
from hardway.lab.probes import Report

if TYPE_CHECKING:
    from hardway.inventory import Inventory


class Lab:
    """A handle on a lab: its layout, paths and inventory; stop/start single nodes."""

    def __init__(self, p: LabLayout) -> None:
        self.layout = p

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, {self.layout.subnet}, {len(self.layout.nodes)} nodes)"

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def inventory_path(self) -> Path:
        return self.layout.inventory_path

    @cached_property
    def inventory(self) -> Inventory:
        from hardway import inventory

        return inventory.load(self.inventory_path)

    def pids(self) -> dict[str, int]:
        """node -> pid of its systemd-nspawn, for the nodes that run."""
        return probes.nspawn_processes(self.layout)

    def stop_node(self, node: str, timeout: float = 30.0) -> None:
        stop_node(self.name, node, state_root=self.layout.state_root, timeout=timeout)

    def start_node(self, node: str, timeout: float = 120.0) -> None:
        start_node(self.name, node, state_root=self.layout.state_root, timeout=timeout)

    def status(self) -> list[node_status.NodeStatus]:
        return node_status.status(self.name, state_root=self.layout.state_root)


@contextlib.contextmanager
def _locked(p: LabLayout) -> Iterator[None]:
    p.state_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(p.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HardwayError(f"another lab command is working on lab {p.name!r} (lock {p.lock_path}); "
                               "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _check_subnet_free(p: LabLayout) -> None:
    for other in recorded_labs(p.state_root):
        if other.name != p.name and other.subnet.overlaps(p.subnet):
            raise HardwayError(f"subnet {p.subnet} is taken by lab {other.name!r} ({other.subnet}); "
                               "pass another with --subnet")
        if other.name != p.name and iface_tag(other.name) == iface_tag(p.name):
            raise HardwayError(f"lab names {p.name!r} and {other.name!r} map to the same interface names "
                               f"(hw-{iface_tag(p.name)}); pick another name")
    for net in probes.host_networks(exclude_dev=p.bridge):
        if net.overlaps(p.subnet):
            raise HardwayError(f"subnet {p.subnet} overlaps {net}, already on this host; pass another "
                               "with --subnet")


def up(
    name: str = DEFAULT_NAME,
    controllers: int | None = None,
    workers: int | None = None,
    subnet: str | None = None,
    *,
    loadbalancers: int | None = None,
    state_root: Path = STATE_ROOT,
    inventory_copy: Path | None = None,
    timeout: float | None = None,
    report: Report = print,
) -> Lab:
    """Boot the lab (or finish booting it); return once every node's systemd is ``running`` and
    root logs in over strict SSH.

    ``controllers``/``workers``/``subnet``/``loadbalancers`` default to the recorded lab's, else 3, 2,
    10.77.0.0/24 and 1. On a running lab it reports and changes nothing; asking for another shape is an
    error. Leftovers of a crashed run without a record are removed first. ``inventory_copy``: also
    write the inventory there (tasks/lab.py: inventory/lab.yaml for the default lab).
    """
    check_name(name)
    probes.preflight(report)
    recorded = load_layout(name, state_root)
    requested = layout(
        name,
        controllers if controllers is not None else recorded.controllers if recorded else DEFAULT_CONTROLLERS,
        workers if workers is not None else recorded.workers if recorded else DEFAULT_WORKERS,
        subnet or (recorded.subnet if recorded else DEFAULT_SUBNET),
        state_root,
        loadbalancers if loadbalancers is not None else recorded.loadbalancers if recorded else DEFAULT_LOADBALANCERS,
    )
    with _locked(requested):
        p = load_layout(name, state_root)
        if p is not None:
            if (p.controllers, p.workers, p.subnet, p.loadbalancers) != (
                    requested.controllers, requested.workers, requested.subnet, requested.loadbalancers):
                raise HardwayError(
                    f"lab {name!r} exists with {p.shape} on {p.subnet}; "
                    f"`invoke lab.down --name {name}` first to change it"
                )
        else:
            if machine.leftovers(requested):
                report(f"lab {name}: removing leftovers of an earlier run")
                machine.teardown(requested, report)
            p = requested
        todo = [n for n in p.nodes if n.name not in probes.nspawn_processes(p)]
        wait = timeout or 60.0 + 10.0 * len(todo)
        if not todo:
            machine.wait_ready(p, list(p.nodes), wait)
            wrote = inventory_copy is not None and write_inventory(p, inventory_copy)
            report(f"lab {name} is already running ({len(p.nodes)} nodes on {p.subnet}, bridge {p.bridge}); "
                   "nothing changed" + (f" (rewrote {inventory_copy})" if wrote else ""))
            return Lab(p)
        fresh = recorded is None
        try:
            _check_subnet_free(p)
            if not cgroups.hierarchies():  # fail before anything is made
                raise HardwayError("no cgroup hierarchy for systemd is mounted (cgroup2 or name=systemd); "
                                   "the lab's machines need one")
            started = time.monotonic()
            localfs.private_dir(p.state_dir)
            write_record(p)
            if len(todo) < len(p.nodes):
                report(f"lab {name}: starting {', '.join(n.name for n in todo)} (the others are running)")
            authorized = image.ensure_client_key(p)
            node_image = image.node_image(state_root)
            for node in p.nodes:
                image.prepare_node(p, node, node_image, authorized)
            image.write_known_hosts(p)
            write_inventory(p, p.inventory_path)
            if inventory_copy is not None:
                write_inventory(p, inventory_copy)
            machine.ensure_bridge(p)
            with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:  # ip, mount, nspawn: mostly waiting
                list(pool.map(lambda node: machine.start(p, node), todo))
            machine.wait_ready(p, list(p.nodes), wait)
            report(f"lab {name}: {len(p.nodes)} nodes running in {time.monotonic() - started:.1f} s "
                   f"({p.shape} on {p.subnet}; jumpbox {p.gateway} on "
                   f"{p.bridge}); inventory {inventory_copy or p.inventory_path}")
            return Lab(p)
        except HardwayError:
            raise  # it names the console log to read and `lab.down` to clean up: the lab stays to inspect
        except BaseException as exc:
            # A killed run is resumed by the next lab.up; a fresh one that crashed or was interrupted
            # (Ctrl-C) is undone, so no machine, mount or netns outlives the error.
            if fresh:
                with contextlib.suppress(Exception):
                    machine.teardown(p, lambda _m: None)
            if isinstance(exc, OSError):
                raise HardwayError(f"lab {name}: {exc.strerror or exc}: {exc.filename or ''}"
                                   + ("; nothing was left behind" if fresh else
                                      f"; `invoke lab.down --name {name}` removes the lab")) from None
            raise


def get(name: str = DEFAULT_NAME, state_root: Path = STATE_ROOT) -> Lab:
    """The recorded lab ``name``; a one-line error if there is none."""
    return Lab(machine.existing_layout(name, state_root))


def stop_node(name: str, node: str, *, state_root: Path = STATE_ROOT, timeout: float = 30.0) -> None:
    """Power one node off, as if unplugged: its machine stops and its link goes down, so
    connections to it time out (not refused). Its disk is kept for start_node."""
    probes.require_root("lab.stop_node")
    p = machine.existing_layout(name, state_root)
    n = p.node(node)
    with _locked(p):
        machine.power_off(p, [n.name], timeout)
        cgroups.remove(cgroups.node_cgroups(p.name, n.name))
        merged = str(p.merged(n))
        if merged in probes.lab_mounts(p):
            machine.umount(merged)
        if p.netns(n) in probes.netns_list():
            probes.run(["ip", "-n", p.netns(n), "link", "set", NODE_IFACE, "down"], check=False)


def start_node(name: str, node: str, *, state_root: Path = STATE_ROOT, timeout: float = 120.0) -> None:
    """Boot one node again (same disk) and wait until it is ready (systemd running, SSH)."""
    probes.require_root("lab.start_node")
    p = machine.existing_layout(name, state_root)
    n = p.node(node)
    with _locked(p):
        machine.ensure_bridge(p)
        machine.start(p, n)
        machine.wait_ready(p, [n], timeout)


def down(name: str = DEFAULT_NAME, *, state_root: Path = STATE_ROOT, report: Report = print) -> machine.Removal:
    """Remove the lab: machines (graceful poweroff, then SIGKILL), mounts, netns, links, cgroups,
    state; also what a crashed or killed run left behind. Returns once every process of the lab's
    machines has exited, with what was removed."""
    probes.require_root("lab.down")
    p = load_layout(name, state_root) or layout(name, 1, 0, DEFAULT_SUBNET, state_root)
    with _locked(p):
        removed = machine.teardown(p, report)
        with contextlib.suppress(OSError):
            p.lock_path.unlink()
    report(removed.summary())
    return removed
