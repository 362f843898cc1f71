"""``invoke rotate-encryption-key``: a new key (or another provider) for Secrets at rest, the way
upstream's encryption page documents it, without a moment where an apiserver cannot read a Secret.

Stages of the config on every controller (old keys O, the new key N; identity always last):

0. start    O         — what the cluster runs today;
1. added    O, N      — every apiserver can read N; none writes with it yet. All restarted one at a
                        time behind the load balancer before stage 2, because an apiserver still on
                        stage 0 could not read what a stage-2 apiserver writes;
2. first    N, O      — N encrypts every write; O still reads what was stored before;
   rewrite            — every Secret rewritten through the API (``kubectl get secrets -A -o json |
                        kubectl replace -f -``) and then read back from etcd with etcdctl: each value's
                        prefix ``k8s:enc:<provider>:v1:<key>:`` must name N;
3. dropped  N         — only after etcd holds no value under another key (checked again right
                        before the push: never drop a key that still encrypts data).

Resumable: a node's stage is read from its config's sha256 (each stage's bytes are known here), and
an apiserver started before its config was last written still runs the older stage and is restarted.
``pki/<cluster>/encryption-rotation.yaml`` (0600: it holds the keys) records O, N and whether the
rewrite was verified; the PKI dir's encryption config always holds the newest stage pushed, so a
``bootstrap-control-plane`` in between pushes a config every apiserver can work with.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from hardway import deploy, encryption, localfs, remote
from hardway.chapters import Context, owner_of
from hardway.chapters.control_plane import files as cp_files
from hardway.chapters.etcd.files import ctl
from hardway.encryption import Key
from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, file_hashes, file_stats, gather, unit_states
from hardway.files import File
from hardway.inventory import Node
from hardway.procedure import Procedure
from hardway.remote import Remote
from hardway.state import PkiState

STAGES = ("start", "added", "first", "dropped")
START, ADDED, FIRST, DROPPED = range(4)
CONFIG = cp_files.ENCRYPTION_CONFIG
APISERVER = cp_files.APISERVER
SECRETS_PREFIX = "/registry/secrets/"
REWRITE = "kubectl get secrets -A -o json | kubectl replace -f -"
SKIPPED_STANDIN = "skipped: stand-in"


# --- the state file ----------------------------------------------------------------------------


@dataclass
class Rotation:
    old: list[Key]
    new: Key
    rewritten: bool = False  # every Secret in etcd was seen under ``new``

    def keys(self, stage: int) -> list[Key]:
        return [self.old, [*self.old, self.new], [self.new, *self.old], [self.new]][stage]

    def data(self, stage: int) -> bytes:
        return encryption.render_keys(self.keys(stage))

    def stage_of(self, sha256: str | None) -> int | None:
        """Which stage a config with this sha256 is (the highest, where two stages are the same bytes)."""
        found = [s for s in range(4) if File(CONFIG, 0o600, self.data(s)).sha256 == sha256]
        return found[-1] if found else None

    def describe(self, stage: int) -> str:
        return ", ".join(k.label for k in self.keys(stage))


def state_file(state: PkiState) -> Path:
    return state.root / encryption.ROTATION_STATE


def load_rotation(state: PkiState) -> tuple[Rotation | None, str]:
    """The rotation under way (or None), and the key a finished one left in use ("" if none)."""
    path = state_file(state)
    try:
        doc = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return None, ""
    except yaml.YAMLError:
        doc = None
    try:
        if doc.get("done"):
            return None, str(doc["done"])
        rot = Rotation([Key(**k) for k in doc["old"]], Key(**doc["new"]), bool(doc.get("rewritten", False)))
    except (AttributeError, KeyError, TypeError):
        raise HardwayError(f"{path}: not a rotation state hardway wrote; restore it from a backup (it holds the "
                           "new key), or, if every controller still runs the PKI dir's encryption config, move "
                           "it aside and run `invoke rotate-encryption-key` again") from None
    return rot, ""


def save_rotation(state: PkiState, rot: Rotation | None, done: str = "") -> None:
    doc: dict[str, Any] = {"done": done} if rot is None else {
        "old": [k.to_dict() for k in rot.old], "new": rot.new.to_dict(), "rewritten": rot.rewritten}
    localfs.write_atomic(state_file(state), yaml.safe_dump(doc, sort_keys=False).encode(), localfs.SECRET_MODE)


# --- what the nodes run ------------------------------------------------------------------------


@dataclass
class NodeView:
    node: Node
    sha256: str | None
    stale: bool  # the apiserver started before its config was last written: it runs an older one
    active: bool
    stage: int | None = None


def look(ctx: Context) -> list[NodeView]:
    """Every controller where hardway deployed the apiserver: its config's sha256 and the unit."""
    unit_path = cp_files.UNIT_PATHS[APISERVER]

    def one(r: Remote) -> NodeView | None:
        hashes, stats, states = file_hashes([CONFIG]), file_stats([CONFIG]), unit_states([APISERVER])
        v = gather(r, [hashes, stats, states, deploy.RECORD_FACT])
        if unit_path not in v[deploy.RECORD_FACT]:
            return None
        st, unit = v[stats].get(CONFIG), v[states][APISERVER]
        stale = unit.active == "active" and st is not None and unit.since is not None and st.changed > unit.since
        return NodeView(r.node, v[hashes].get(CONFIG), stale, unit.active == "active")

    outcomes = remote.fan_out(ctx.inv, ctx.inv.controllers, one, connector=ctx.connector)
    if (error := remote.first_error(outcomes)) is not None:
        raise HardwayError(f"cannot look at the controllers: {error}; nothing was changed; re-run "
                           "`invoke rotate-encryption-key` once they answer")
    views = [o.value for o in outcomes if o.value is not None]
    if not views:
        raise HardwayError("no controller runs an apiserver hardway deployed: run `invoke bootstrap-control-plane` "
                           "first (a cluster without one needs no rotation: its next config gets the new key)")
    return views


def place(rot: Rotation, views: Sequence[NodeView]) -> list[NodeView]:
    """Give every view its stage; a config of no stage is an error naming the node."""
    for v in views:
        v.stage = rot.stage_of(v.sha256)
        if v.stage is None:
            raise HardwayError(
                f"{v.node.name}: {CONFIG} is none of this rotation's stages ({', '.join(STAGES)}): it was changed "
                "by hand or by another jumpbox; nothing was changed. Put back the PKI dir's config with "
                "`invoke bootstrap-control-plane` if every apiserver can read it, then re-run "
                "`invoke rotate-encryption-key`")
    return list(views)


# --- the plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: str  # push | roll | verify | rewrite | guard | finish
    stage: int
    nodes: tuple[str, ...] = ()


def pending(rot: Rotation, views: Sequence[NodeView]) -> list[Action]:
    """What is left to do, from each node's stage and whether its apiserver runs it (resume points)."""
    out: list[Action] = []
    for t in (ADDED, FIRST, DROPPED):
        if t == DROPPED:
            if not rot.rewritten:
                out.append(Action("rewrite", FIRST))
            out.append(Action("guard", DROPPED))
        behind = tuple(v.node.name for v in views if v.stage is not None and v.stage < t)
        roll = tuple(v.node.name for v in views if v.stage is not None and (
            v.stage < t or (v.stage == t and (v.stale or not v.active))))
        if behind:
            out.append(Action("push", t, behind))
        if roll:
            out.append(Action("roll", t, roll))
        if behind or roll:
            out.append(Action("verify", t))
    if out == [Action("guard", DROPPED)]:
        return []  # every node runs the last stage and the rewrite was verified: only the bookkeeping left
    return out


# --- etcd: which key encrypts each Secret --------------------------------------------------------


def _labels(out: FactOutput) -> dict[str, str] | None:
    """key -> "provider:keyname" (or "identity" for a value stored unencrypted) of every Secret."""
    if not out.ok:
        return None
    doc = None
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
            break
        except ValueError:
            continue
    if not isinstance(doc, dict):
        return None
    labels = {}
    for kv in doc.get("kvs") or []:
        value = base64.b64decode(kv.get("value", ""))
        parts = value.split(b":", 5)
        label = (f"{parts[2].decode(errors='replace')}:{parts[4].decode(errors='replace')}"
                 if value.startswith(b"k8s:enc:") and len(parts) >= 5 else "identity")
        labels[base64.b64decode(kv["key"]).decode(errors="replace")] = label
    return labels


def secret_keys(ctx: Context) -> dict[str, str]:
    """Which key encrypts each Secret in etcd, read with etcdctl (etcd's CA and a member's client
    certificate) on the first controller that answers."""
    errors = []
    for c in ctx.inv.controllers:
        fact = Fact("etcd_secret_keys", ctl(ctx.inv, c, f"get --prefix {SECRETS_PREFIX} -w json"), _labels, (c.name,))
        o = remote.fan_out(ctx.inv, [c], lambda r, f=fact: gather(r, [f])[f], connector=ctx.connector)[0]
        if o.ok and o.value is not None:
            return o.value
        errors.append(f"{c.name}: {o.error or 'etcdctl get failed'}")
    raise HardwayError(f"cannot read the Secrets from etcd ({'; '.join(errors)}); run `invoke verify --chapter etcd`")


def still_old(labels: dict[str, str], new: Key) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v != new.label}


def _old_error(old: dict[str, str], new: Key, what: str, resume: str) -> HardwayError:
    first = sorted(old)[0]
    counts: dict[str, int] = {}
    for label in old.values():
        counts[label] = counts.get(label, 0) + 1
    under = ", ".join(f"{n} under {label}" for label, n in sorted(counts.items()))
    return HardwayError(f"{what}: {len(old)} Secret(s) in etcd are not under {new.label} ({under}; e.g. {first}); "
                        f"dropping their key would make them unreadable, so it stays. Rewrite them through the "
                        f"API (`{REWRITE}`), then re-run `{resume}`: it resumes here")


# --- doing ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)  # "step: ok|skipped: stand-in|...: detail"

    def say(self, ctx: Context, line: str) -> None:
        """Shown as it happens (an interrupted run still showed it) and kept for the report."""
        self.lines.append(line)
        ctx.progress("jumpbox", line)


def _push(ctx: Context, rot: Rotation, stage: int, names: Sequence[str]) -> None:
    data = rot.data(stage)
    chapter = owner_of(APISERVER).name
    f = File(CONFIG, 0o600, data, services=(APISERVER,), secret=True, chapter=chapter)

    def one(r: Remote) -> None:
        hashes, stats = file_hashes([CONFIG]), file_stats([CONFIG])
        v = gather(r, [hashes, stats, deploy.RECORD_FACT])
        plan = deploy.plan_push([f], v[hashes], v[stats], v[deploy.RECORD_FACT])
        if plan.foreign:
            raise deploy.foreign_error(r.node.name, plan.foreign, "invoke bootstrap-control-plane")
        deploy.push(r, plan)
        ctx.progress(r.node, f"{CONFIG}: stage {STAGES[stage]} ({rot.describe(stage)})")

    nodes = [n for n in ctx.inv.controllers if n.name in names]
    if (error := remote.first_error(remote.fan_out(ctx.inv, nodes, one, connector=ctx.connector))):
        raise HardwayError(f"push of stage {STAGES[stage]} failed on {error}")


def _verify(ctx: Context, rot: Rotation, stage: int, out: Outcome, resume: str) -> None:
    views = place(rot, look(ctx))
    wrong = [f"{v.node.name} has stage {STAGES[v.stage or 0]}" for v in views if v.stage != stage]
    wrong += [f"{v.node.name}'s apiserver runs an older config" for v in views if v.stale]
    wrong += [f"{v.node.name}'s apiserver is not running" for v in views if not v.active]
    if wrong:
        raise HardwayError(f"stage {STAGES[stage]} not reached: {'; '.join(wrong)}; re-run `{resume}`")
    out.say(ctx, f"stage {STAGES[stage]}: ok: every apiserver ({len(views)}) runs {rot.describe(stage)}, "
                     "restarted one at a time and ready")


def _rewrite(ctx: Context, state: PkiState, rot: Rotation, out: Outcome, resume: str) -> None:
    if cp_files.is_standin(ctx.inv, APISERVER):
        out.say(ctx, f"rewrite every Secret: {SKIPPED_STANDIN} (the stand-in apiserver serves no API; "
                         f"a real one runs `{REWRITE}`)")
    else:
        from hardway.chapters.control_plane.apply import kubectl

        got = kubectl(ctx, "get", "secrets", "-A", "-o", "json", timeout=600)
        if got.returncode != 0:
            raise HardwayError(f"kubectl get secrets -A: {got.stderr.strip()[:200]}")
        put = kubectl(ctx, "replace", "-f", "-", stdin=got.stdout, timeout=600)  # one request per Secret
        if put.returncode != 0:
            raise HardwayError(f"kubectl replace: {put.stderr.strip()[:200]}")
        out.say(ctx, f"rewrite every Secret: ok ({len(json.loads(got.stdout).get('items', []))} replaced)")
    labels = secret_keys(ctx)
    if (old := still_old(labels, rot.new)):
        raise _old_error(old, rot.new, "after the rewrite", resume)
    out.say(ctx, f"etcd: ok: all {len(labels)} Secret(s) stored under {rot.new.label} (prefix "
                     f"{rot.new.prefix.decode()})")
    rot.rewritten = True
    save_rotation(state, rot)


def _guard(ctx: Context, rot: Rotation, resume: str) -> None:
    if (old := still_old(secret_keys(ctx), rot.new)):
        raise _old_error(old, rot.new, f"before dropping {', '.join(k.label for k in rot.old)}", resume)


def _local(state: PkiState, rot: Rotation, stage: int) -> None:
    """The PKI dir's config follows the newest stage pushed (what bootstrap-control-plane would push)."""
    localfs.write_atomic(state.encryption_config, rot.data(stage), localfs.SECRET_MODE)


def _finish(ctx: Context, state: PkiState, rot: Rotation, out: Outcome) -> None:
    _local(state, rot, DROPPED)
    save_rotation(state, None, done=rot.new.label)
    out.say(ctx, f"done: Secrets are encrypted with {rot.new.label}; "
                     f"{', '.join(k.label for k in rot.old)} dropped")


@dataclass
class Run:
    procedure: Procedure
    outcome: Outcome
    rotation: Rotation | None  # None: nothing to do


def prepare(ctx: Context, *, another: bool = False, resume: str = "invoke rotate-encryption-key") -> Run:
    """Decide the steps: resume the rotation under way, or begin one (``another``, or the inventory
    names another provider than the one that encrypts now). Nothing is changed until the run."""
    state, inv = ctx.state, ctx.inv
    rot, done = load_rotation(state)
    out = Outcome()
    proc = Procedure("rotate-encryption-key", ctx.progress)
    if rot is None:
        old = encryption.load(state)
        provider = inv.encryption_provider if inv.encryption_provider_given else old[0].provider
        if done and not another and provider == old[0].provider:
            views = look(ctx)
            local = File(CONFIG, 0o600, state.encryption_config.read_bytes()).sha256
            if all(v.sha256 == local and v.active and not v.stale for v in views):
                out.lines.append(f"nothing to do: every apiserver ({len(views)}) encrypts with {old[0].label} "
                                 "(the last rotation finished); `invoke rotate-encryption-key --another` makes a "
                                 "new key")
                return Run(proc, out, None)
            raise HardwayError("an apiserver does not run the PKI dir's encryption config: run "
                               "`invoke bootstrap-control-plane` first, then rotate")
        rot = Rotation(old, encryption.new_key(provider, old))
        views = place(rot, look(ctx))
        if (off := [v.node.name for v in views if v.stage != START or v.stale or not v.active]):
            raise HardwayError(f"{', '.join(off)}: the apiserver does not run the PKI dir's encryption config; "
                               "run `invoke bootstrap-control-plane` first, then rotate (nothing was changed)")
        proc.add("jumpbox", f"begin: new {rot.new.label} after {', '.join(k.label for k in old)}; recorded in "
                 f"{state_file(state)} (0600)", "", partial(save_rotation, state, rot), final=resume)
    else:
        views = place(rot, look(ctx))
        proc.add("jumpbox", f"resume: {rot.new.label} replaces {', '.join(k.label for k in rot.old)}; nodes at "
                 + ", ".join(f"{v.node.name} {STAGES[v.stage or 0]}{' (not restarted)' if v.stale else ''}"
                             for v in views), final=resume)
    nodes = {n.name: n for n in inv.controllers}
    for a in pending(rot, views):
        name = STAGES[a.stage]
        if a.kind == "push":
            proc.add("jumpbox", f"stage {name}: PKI dir's encryption config = {rot.describe(a.stage)}",
                     f"write {state.encryption_config} (0600)", partial(_local, state, rot, a.stage), final=resume)
            proc.add(",".join(a.nodes), f"stage {name}: push {CONFIG} ({rot.describe(a.stage)})",
                     f"install -m 0600 -o root -g root <stage {name}> {CONFIG}",
                     partial(_push, ctx, rot, a.stage, a.nodes), final=resume)
        elif a.kind == "roll":
            for n in a.nodes:
                proc.add(n, f"stage {name}: restart {APISERVER} (drain on the load balancer, restart, readyz, back)",
                         f"systemctl restart {APISERVER}", partial(owner_of(APISERVER).restart, ctx, nodes[n],
                                                                    APISERVER), final=resume)
        elif a.kind == "verify":
            proc.add("jumpbox", f"stage {name}: verify every apiserver runs it and is ready", "",
                     partial(_verify, ctx, rot, a.stage, out, resume), final=resume)
        elif a.kind == "rewrite":
            proc.add("jumpbox", f"rewrite every Secret under {rot.new.label}, then read each one's prefix from etcd",
                     f"{REWRITE}\netcdctl get --prefix {SECRETS_PREFIX} -w json  # each value begins "
                     f"{rot.new.prefix.decode()}", partial(_rewrite, ctx, state, rot, out, resume), final=resume)
        elif a.kind == "guard":
            proc.add("jumpbox", f"check etcd holds no Secret under {', '.join(k.label for k in rot.old)}",
                     f"etcdctl get --prefix {SECRETS_PREFIX} -w json", partial(_guard, ctx, rot, resume), final=resume)
    proc.add("jumpbox", f"finish: PKI dir's config = {rot.new.label}; rotation recorded as done", "",
             partial(_finish, ctx, state, rot, out), final=resume)
    return Run(proc, out, rot)


def rotate(ctx: Context, *, another: bool = False, resume: str = "invoke rotate-encryption-key",
           dry_run: bool = False, before: Callable[[Procedure], None] | None = None) -> tuple[str, Outcome]:
    """Plan and (unless ``dry_run``) run; returns the plan's text and what was verified."""
    run = prepare(ctx, another=another, resume=resume)
    if run.rotation is None:
        return "\n".join(run.outcome.lines), run.outcome
    text = run.procedure.describe()
    if dry_run:
        return text, run.outcome
    if before is not None:
        before(run.procedure)
    run.procedure.run()
    return text, run.outcome
