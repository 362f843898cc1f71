"""Certificate rotation after an address change (or before expiry): reissue, push, roll.

The plan is computed by doing the real reissue into a private copy of the PKI state, so a dry
run names exactly the certificates, kubeconfigs and node files the real run then changes. Only
files already deployed on a node are pushed (a chapter not bootstrapped there stays untouched),
and services restart one node at a time, each healthy before the next, so etcd keeps quorum
and the apiservers keep serving.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from hardway import jumpbox, pki, plan, remote
from hardway.chapters import etcd
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.remote import Connector, Progress, Remote
from hardway.state import PkiState

# Restart order: etcd first (the apiservers' backend), then the control plane, then workers.
RESTART_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd",
                 "kubelet", "kube-proxy")


@dataclass(frozen=True)
class FileChange:
    path: str
    why: str


@dataclass
class NodePlan:
    node: Node
    changes: list[FileChange] = field(default_factory=list)
    files: list[File] = field(default_factory=list)  # the planned File objects behind `changes`
    undeployed: int = 0  # planned files absent on the node: their chapter is not bootstrapped there
    restarts: list[str] = field(default_factory=list)  # active services to restart, in order


@dataclass
class RotationPlan:
    outcomes: list[pki.Outcome]
    nodes: list[NodePlan]

    @property
    def changed_outcomes(self) -> list[pki.Outcome]:
        return [o for o in self.outcomes if o.action != "kept"]

    def file_set(self) -> set[tuple[str, str]]:
        """(node, path) of every file the run pushes: what a dry run promises."""
        return {(n.node.name, c.path) for n in self.nodes for c in n.changes}

    def format(self) -> str:
        lines = ["Certificates and kubeconfigs:"]
        for o in self.outcomes:
            if o.action == "kept":
                continue
            lines.append(f"  {o.action:<9} {o.kind:<11} {o.name}: {'; '.join(o.reasons)}")
        kept = [o.name for o in self.outcomes if o.action == "kept"]
        lines.append(f"  kept      {len(kept)} unchanged: {', '.join(kept)}" if kept else "  (none kept)")
        lines.append("Nodes:")
        for n in self.nodes:
            if not n.changes:
                lines.append(f"  {n.node.name}: nothing to push")
                continue
            lines.append(f"  {n.node.name}: push {len(n.changes)} file(s)")
            lines.extend(f"    {c.path}  ({c.why})" for c in n.changes)
            if n.undeployed:
                lines.append(f"    ({n.undeployed} planned file(s) not deployed there: chapter not "
                             "bootstrapped; left alone)")
        order = restart_sequence(self.nodes)
        lines.append("Restarts (one at a time, each healthy before the next):")
        lines.extend(f"  {i}. {svc} on {node}" for i, (svc, node) in enumerate(order, 1))
        if not order:
            lines.append("  none")
        return "\n".join(lines)


def restart_sequence(nodes: Sequence[NodePlan]) -> list[tuple[str, str]]:
    return [(svc, n.node.name) for svc in RESTART_ORDER for n in nodes if svc in n.restarts]


def _origins(state: PkiState, outcomes: Sequence[pki.Outcome]) -> dict[str, str]:
    """sha256 of a state file's bytes -> why it changed, to explain node files by their source."""
    changed = {o.name: o for o in outcomes if o.action != "kept"}
    out: dict[str, str] = {}
    for name, o in changed.items():
        candidates = [state.cert(name), state.key(name), state.kubeconfig(name), state.public_key(name)]
        for path in candidates:
            if path.is_file():
                why = f"{o.kind} {name} {o.action}: {'; '.join(o.reasons)}" if o.reasons else f"{name} {o.action}"
                out[hashlib.sha256(path.read_bytes()).hexdigest()] = why
    return out


def _plan_nodes(inv: Inventory, state: PkiState, outcomes: Sequence[pki.Outcome], *, cache_dir: Path | None,
                connector: Connector, progress: Progress) -> list[NodePlan]:
    origins = _origins(state, outcomes)
    planned = {n.name: plan.node_files(inv, n, state, cache_dir=cache_dir) for n in inv.nodes}

    def inspect(r: Remote) -> NodePlan:
        files = planned[r.node.name]
        hashes = remote.remote_hashes(r, [f.path for f in files])
        np = NodePlan(r.node)
        for f in files:
            have = hashes.get(f.path)
            if have is None:
                np.undeployed += 1
            elif have != f.sha256:
                np.files.append(f)
                why = origins.get(f.sha256, "rendered from the inventory: content changed")
                np.changes.append(FileChange(f.path, why))
        services = {s for f in np.files for s in f.services} | remote.stale_services(r, files)
        states = remote.service_states(r, [s for s in RESTART_ORDER if s in services])
        np.restarts = [s for s, (state, _) in states.items() if state == "active"]
        progress(r.node, f"{len(np.changes)} file(s) to push, {len(np.restarts)} restart(s)")
        return np

    outcomes_ = remote.fan_out(inv, inv.nodes, inspect, connector=connector)
    bad = [o for o in outcomes_ if not o.ok]
    if bad:
        raise HardwayError(f"cannot inspect {bad[0].error}; nothing was pushed (the PKI state may already be "
                           "reissued: re-run rotate-certs once the node is back, it converges)")
    return [o.value for o in outcomes_ if o.value is not None]


def plan_rotation(inv: Inventory, state: PkiState, *, renew_within: timedelta | None = None,
                  cache_dir: Path | None = None, connector: Connector = remote.connect,
                  progress: Progress | None = None) -> RotationPlan:
    """Dry run: reissue into a private copy of the state and compare it with every node."""
    progress = progress or Progress()
    if not state.cert(pki.CA_NAME).is_file():
        raise HardwayError(f"{state.root}: no CA; run `invoke pki` first (rotation keeps the existing CA)")
    with tempfile.TemporaryDirectory(prefix="hardway-rotate-") as tmp:
        copy = PkiState(Path(tmp) / "state")
        shutil.copytree(state.root, copy.root, copy_function=shutil.copy2)
        outcomes = jumpbox.generate(inv, copy, renew_within=renew_within)
        nodes = _plan_nodes(inv, copy, outcomes, cache_dir=cache_dir, connector=connector, progress=progress)
    return RotationPlan(outcomes, nodes)


@dataclass
class RotationReport:
    plan: RotationPlan
    written: dict[str, list[str]]
    restarted: list[tuple[str, str]]


def rotate(inv: Inventory, state: PkiState, *, renew_within: timedelta | None = None,
           cache_dir: Path | None = None, connector: Connector = remote.connect,
           progress: Progress | None = None, timeout: float = 90.0) -> RotationReport:
    """Reissue in the real state, push what changed, restart affected services rolling."""
    with remote.Pool(connector) as pool:
        return _rotate(inv, state, renew_within=renew_within, cache_dir=cache_dir, connector=pool,
                       progress=progress or Progress(), timeout=timeout)


def _rotate(inv: Inventory, state: PkiState, *, renew_within: timedelta | None, cache_dir: Path | None,
            connector: Connector, progress: Progress, timeout: float) -> RotationReport:
    outcomes = jumpbox.generate(inv, state, renew_within=renew_within)
    nodes = _plan_nodes(inv, state, outcomes, cache_dir=cache_dir, connector=connector, progress=progress)
    the_plan = RotationPlan(outcomes, nodes)
    by_name = {n.node.name: n for n in nodes}

    def push(r: Remote) -> list[str]:
        np = by_name[r.node.name]
        written = remote.install(r, np.files)
        if any(f.path.startswith("/etc/systemd/system/") for f in written):
            remote.systemctl(r, "daemon-reload")
        if written:
            progress(r.node, f"pushed {len(written)} file(s)")
        return [f.path for f in written]

    pushed = remote.fan_out(inv, [n.node for n in nodes if n.files], push, connector=connector)
    bad = [o for o in pushed if not o.ok]
    if bad:
        raise HardwayError(f"push failed on {bad[0].error}; nothing was restarted — re-run rotate-certs, it "
                           "converges")
    written = {o.node.name: o.value or [] for o in pushed}
    restarted: list[tuple[str, str]] = []
    for service, node_name in restart_sequence(nodes):
        node = inv.node(node_name)
        if service == "etcd":
            etcd.rolling_restart(inv, node, connector=connector, progress=progress, timeout=timeout)
        else:
            _restart_and_wait(inv, node, service, connector=connector, progress=progress, timeout=timeout)
        restarted.append((service, node_name))
    return RotationReport(the_plan, written, restarted)


def _restart_and_wait(inv: Inventory, node: Node, service: str, *, connector: Connector, progress: Progress,
                      timeout: float) -> None:
    r = connector(inv, node)
    try:
        progress(node, f"restart {service}")
        remote.systemctl(r, "restart", service, timeout=int(timeout))
        t0 = time.monotonic()
        while remote.unit_state(r, service) != "active":
            if time.monotonic() - t0 > timeout:
                raise HardwayError(f"{node.name}: {service} not active {timeout:.0f}s after restart; rotation "
                                   "stopped here so the remaining nodes keep serving — see `journalctl -u "
                                   f"{service}` on {node.name}")
            time.sleep(0.5)
    finally:
        r.close()
