"""Certificate rotation after an address change (or before expiry): reissue, push, roll.

The plan is computed by doing the real reissue into a private copy of the PKI state, so a dry
run names exactly the certificates, kubeconfigs and node files the real run then changes. Only
files in a node's deployment record are pushed (a chapter not bootstrapped there, or a file
hardway did not deploy, stays untouched), and services restart one node at a time in the
registry's order, each healthy before the next, so etcd keeps quorum and the apiservers keep
serving. Each restart is its chapter's own (etcd waits for member health).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from hardway import deploy, etcd_trust, jumpbox, pki, plan, remote, services
from hardway.chapters import Context, owner_of, restart_order
from hardway.errors import HardwayError
from hardway.facts import file_hashes, file_stats, gather, unit_states
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.remote import Connector, Progress, Remote
from hardway.state import PkiState


@dataclass(frozen=True)
class FileChange:
    path: str
    why: str


@dataclass
class NodePlan:
    node: Node
    changes: list[FileChange] = field(default_factory=list)
    files: list[File] = field(default_factory=list)  # the planned File objects behind `changes`
    push: deploy.PushPlan = field(default_factory=deploy.PushPlan)
    undeployed: int = 0  # planned files hardway has not deployed there: their chapter is not bootstrapped
    foreign: list[str] = field(default_factory=list)  # planned paths holding files hardway did not deploy
    restarts: list[str] = field(default_factory=list)  # active services to restart, in order


@dataclass
class RotationPlan:
    outcomes: list[pki.Generated]
    nodes: list[NodePlan]
    trust: list[str] = field(default_factory=list)  # etcd's move to another CA, step by step (etcd_trust)

    @property
    def changed_outcomes(self) -> list[pki.Generated]:
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
        if self.trust:
            lines.append("etcd moves to its CA first, trusting both CAs while it rolls:")
            lines.extend(f"  {i}. {step}" for i, step in enumerate(self.trust, 1))
            lines.append(f"  {len(self.trust) + 1}. the push below: the old CA is no longer trusted")
        lines.append("Nodes:")
        for n in self.nodes:
            if not n.changes:
                lines.append(f"  {n.node.name}: nothing to push")
                lines.extend(f"    {path}: not deployed by hardway; left alone" for path in n.foreign)
                continue
            lines.append(f"  {n.node.name}: push {len(n.changes)} file(s)")
            lines.extend(f"    {c.path}  ({c.why})" for c in n.changes)
            if n.undeployed:
                lines.append(f"    ({n.undeployed} planned file(s) not deployed there: chapter not "
                             "bootstrapped; left alone)")
            for path in n.foreign:
                lines.append(f"    {path}: not deployed by hardway; left alone")
        order = restart_sequence(self.nodes)
        lines.append("Restarts (one at a time, each healthy before the next):")
        lines.extend(f"  {i}. {svc} on {node}" for i, (svc, node) in enumerate(order, 1))
        if not order:
            lines.append("  none")
        return "\n".join(lines)


def restart_sequence(nodes: Sequence[NodePlan]) -> list[tuple[str, str]]:
    """(service, node) pairs: backends first (the registry's order), one node at a time."""
    return [(svc, n.node.name) for svc in restart_order() for n in nodes if svc in n.restarts]


def _origins(state: PkiState, outcomes: Sequence[pki.Generated]) -> dict[str, str]:
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


def _plan_nodes(inv: Inventory, state: PkiState, outcomes: Sequence[pki.Generated], *, cache_dir: Path | None,
                connector: Connector, progress: Progress) -> list[NodePlan]:
    origins = _origins(state, outcomes)
    planned = {n.name: plan.node_files(inv, n, state, cache_dir=cache_dir) for n in inv.nodes}
    units = restart_order()

    def inspect(r: Remote) -> NodePlan:
        files = planned[r.node.name]
        paths = [f.path for f in files]
        hashes_f, stats_f, states_f = file_hashes(paths), file_stats(paths), unit_states(units)
        facts = gather(r, [hashes_f, stats_f, deploy.RECORD_FACT, states_f])
        hashes, record, states = facts[hashes_f], facts[deploy.RECORD_FACT], facts[states_f]
        np = NodePlan(r.node)
        ours = []
        for f in files:
            have = hashes.get(f.path)
            if f.path not in record:  # never touch what hardway did not deploy
                if have is not None and have != f.sha256:
                    np.foreign.append(f.path)
                elif have is None:
                    np.undeployed += 1
                continue
            ours.append(f)
            if have != f.sha256:
                np.files.append(f)
                np.changes.append(FileChange(f.path, origins.get(f.sha256, "rendered from the inventory: "
                                                                           "content changed")))
        np.push = deploy.plan_push(np.files, hashes, facts[stats_f], record)
        wanted = {s for f in np.files for s in f.services} | services.stale_units(ours, facts[stats_f], states)
        np.restarts = [u for u in units if u in wanted and states[u].active == "active"]
        progress(r.node, f"{len(np.changes)} file(s) to push, {len(np.restarts)} restart(s)")
        return np

    outcomes_ = remote.fan_out(inv, inv.nodes, inspect, connector=connector)
    if (error := remote.first_error(outcomes_)) is not None:
        raise HardwayError(f"cannot inspect {error}; nothing was pushed (the PKI state may already be "
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
        ctx = Context(inv, copy, cache_dir=cache_dir, connector=connector, progress=progress)
        trust = etcd_trust.plan(ctx).describe()
        nodes = _plan_nodes(inv, copy, outcomes, cache_dir=cache_dir, connector=connector, progress=progress)
    return RotationPlan(outcomes, nodes, trust)


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
    ctx = Context(inv, state, cache_dir=cache_dir, connector=connector, progress=progress, timeout=timeout)
    trust = etcd_trust.plan(ctx)
    rolled = etcd_trust.roll(ctx, trust) if trust.needed else []
    nodes = _plan_nodes(inv, state, outcomes, cache_dir=cache_dir, connector=connector, progress=progress)
    the_plan = RotationPlan(outcomes, nodes, trust.describe())
    by_name = {n.node.name: n for n in nodes}

    def push(r: Remote) -> list[str]:
        np = by_name[r.node.name]
        units_changed = any(f.path.startswith(f"{services.UNIT_DIR}/") for f in np.files)
        reload = ["systemctl daemon-reload"] if units_changed else []
        report = deploy.push(r, np.push, then=reload)
        if report.written:
            progress(r.node, f"pushed {len(report.written)} file(s)")
        return report.written

    pushed = remote.fan_out(inv, [n.node for n in nodes if n.files], push, connector=connector)
    if (error := remote.first_error(pushed)) is not None:
        raise HardwayError(f"push failed on {error}; nothing was restarted — re-run rotate-certs, it converges")
    written = {o.node.name: o.value or [] for o in pushed}
    restarted: list[tuple[str, str]] = list(rolled)
    for service, node_name in restart_sequence(nodes):
        owner_of(service).restart(ctx, inv.node(node_name), service)
        restarted.append((service, node_name))
    return RotationReport(the_plan, written, restarted)
