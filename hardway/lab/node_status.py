"""A lab's status: per node, its machine, its systemd's state and whether root logs in over SSH."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hardway import inventory
from hardway.lab import machine, probes
from hardway.lab.addresses import DEFAULT_NAME, STATE_ROOT, LabLayout, LabNode


@dataclass(frozen=True)
class NodeStatus:
    node: str
    address: str
    roles: str
    machine: str  # "running (pid N)" or "stopped"
    systemd: str  # systemctl is-system-running inside the node, or "-"
    ssh: str  # "ok" or why not

    @property
    def ok(self) -> bool:
        return self.systemd == "running" and self.ssh == "ok"


def node_statuses(p: LabLayout) -> list[NodeStatus]:
    running = probes.nspawn_processes(p)
    inv = inventory.load(p.inventory_path)

    def one(n: LabNode) -> NodeStatus:
        pid = running.get(n.name)
        if pid is None:
            return NodeStatus(n.name, str(n.address), ",".join(n.roles), "stopped", "-", "-")
        why = machine.ssh_check(inv, n.name)
        return NodeStatus(n.name, str(n.address), ",".join(n.roles), f"running (pid {pid})",
                          machine.system_state(pid), "ok" if why is None else why)

    with ThreadPoolExecutor(max_workers=min(16, len(p.nodes))) as pool:
        return list(pool.map(one, p.nodes))


def status(name: str = DEFAULT_NAME, *, state_root: Path = STATE_ROOT) -> list[NodeStatus]:
    """Every node of the recorded lab ``name``; a one-line error if there is no such lab."""
    probes.require_root("lab.status")
    return node_statuses(machine.existing_layout(name, state_root))


def format_status(rows: list[NodeStatus]) -> str:
    header = ("NODE", "ADDRESS", "ROLES", "MACHINE", "SYSTEMD", "SSH")
    table = [header] + [(r.node, r.address, r.roles, r.machine, r.systemd, r.ssh) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    )
