"""How the workers chapter applies: a survey that decides per node from its facts, and health waits.

The survey is the base Chapter's, plus what depends on the node: the kubelet's resolvConf (the file
that lists real DNS servers there) and, with ``--fix``, the files that persist the repairs
(/etc/fstab among them: not hardway's, so it is adopted, the original kept beside it). Services come
up in one ``systemctl start``: containerd first (kubelet ``Requires=`` it, and containerd is
``Type=notify``), then kubelet and kube-proxy; healthy means containerd answers on its socket and
the kubelet's and kube-proxy's /healthz answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hardway import deploy, remote
from hardway.chapters.base import Context, Finding, Step, Survey, foreign_findings, survey_all
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import node as wn
from hardway.checks import OK, WARN
from hardway.deploy import PushPlan
from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, file_hashes, file_stats, gather, unit_states
from hardway.files import File, stamps
from hardway.inventory import Node
from hardway.remote import Remote

POLL_S = 0.2
FIX_PATHS = (wn.FSTAB, wn.MODULES_FILE, wn.SYSCTL_FILE)


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


def health_facts() -> dict[str, Fact[tuple[bool, str]]]:
    """Per unit, the question that says it serves: containerd on its socket, the others' /healthz."""
    return {
        wf.CONTAINERD: Fact("containerd_version", f"{wf.CTR} --address {wf.CONTAINERD_SOCKET_PATH} --timeout 3s "
                                                  "version", _answer),
        wf.KUBELET: Fact("kubelet_healthz", f"curl -sS -m 3 http://127.0.0.1:{wf.KUBELET_HEALTHZ}/healthz", _answer),
        wf.KUBE_PROXY: Fact("kube_proxy_healthz", f"curl -sS -m 3 -f http://127.0.0.1:{wf.KUBE_PROXY_HEALTHZ}/healthz",
                            _answer),
    }


def planned_for(ctx: Context, chapter, node: Node, facts: wn.NodeFacts) -> list[File]:
    """The chapter's files for ``node`` with the kubelet's resolvConf chosen from its facts."""
    files = ctx.files(chapter, node)
    path, _ = wn.resolv_conf_choice(facts)
    if path is None or path == wf.DEFAULT_RESOLV_CONF:
        return files
    return [wf.kubelet_config_file(ctx.inv, node, path) if f.path == wf.KUBELET_CONFIG else f for f in files]


@dataclass
class WorkerSurvey(Survey):
    steps: list[Step] = field(default_factory=list)  # what --fix runs on the node, after the files


def _merge(first: PushPlan, second: PushPlan, record_before: dict) -> PushPlan:
    merged = PushPlan(write=first.write + second.write, fix=first.fix + second.fix, adopt=first.adopt + second.adopt,
                      foreign=first.foreign + second.foreign, record=second.record)
    merged.record_changed = merged.record != record_before
    return merged


def survey(ctx: Context, chapter, nodes: Sequence[Node]) -> list[Survey]:
    """Every worker in parallel, one round trip each: node facts, disk, record, unit states."""

    def look(r: Remote) -> Survey:
        ctx.progress(r.node, f"preflight {chapter.name}")
        default = ctx.files(chapter, r.node)
        paths = [f.path for f in default] + list(FIX_PATHS)
        hashes_f, stats_f = file_hashes(paths, stamps(default)), file_stats(paths)
        states_f = unit_states(chapter.units)
        values = gather(r, [*wn.FACTS, hashes_f, stats_f, deploy.RECORD_FACT, deploy.STAGING_FACT, states_f])
        nf = wn.node_facts_from(values)
        items = wn.judge(r.node, nf)
        files = planned_for(ctx, chapter, r.node, nf)
        fixes = wn.fix_plan(items, nf) if ctx.fix else wn.FixPlan()
        record = values[deploy.RECORD_FACT]
        hashes, stats = values[hashes_f], values[stats_f]
        fstab = [f for f in fixes.files if f.path == wn.FSTAB]
        push = deploy.plan_push(files + [f for f in fixes.files if f.path != wn.FSTAB], hashes, stats, record,
                                adopt=ctx.adopt)
        if fstab:  # not hardway's file: --fix adopts it (the original is kept as fstab.hardway-orig-<time>)
            push = _merge(push, deploy.plan_push(fstab, hashes, stats, push.record, adopt=True), record)
        findings = findings_from(r.node, items, ctx.fix) + foreign_findings(r.node, push, chapter.task)
        return WorkerSurvey(r.node, files + fixes.files, values, push, findings,
                            deploy.sweepable(values[deploy.STAGING_FACT]), stats, values[states_f], steps=fixes.steps)

    return survey_all(ctx, chapter, nodes, look)


def findings_from(node: Node, items: list[wn.Item], fixing: bool) -> list[Finding]:
    """Preflight findings; with ``--fix`` a fixable failure is a warning that says what will be done."""
    out = []
    for item in items:
        if fixing and item.fixable and item.status != OK:
            out.append(Finding(node.name, WARN, f"{item.detail}: fixing it"))
        else:
            out.append(item.finding(node.name))
    return out


def wait_healthy(ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
    """Poll each node until its units are active and serving; a failed unit stops the wait at once."""
    asked = health_facts()

    def wait(r: Remote) -> None:
        want = [u for u in wf.UNITS if u in units[r.node.name]]
        states_f = unit_states(want)
        t0, last = time.monotonic(), ""
        while time.monotonic() - t0 < ctx.timeout:
            values = gather(r, [states_f, *(asked[u] for u in want)], timeout=20)
            states = values[states_f]
            failed = [u for u in want if states[u].active == "failed"]
            if failed:
                raise HardwayError(f"{r.node.name}: {wf.label(ctx.inv, failed[0])} failed to start; see "
                                   f"`journalctl -u {failed[0]}` there, or run `invoke verify --chapter workers`")
            waiting = [u for u in want if states[u].active != "active" or not values[asked[u]][0]]
            if not waiting:
                shown = " ".join(wf.label(ctx.inv, u) for u in want)
                ctx.progress(r.node, f"{shown} healthy after {time.monotonic() - t0:.1f}s")
                return
            last = ", ".join(f"{u} ({states[u].active}: {values[asked[u]][1][-80:] or 'no answer'})" for u in waiting)
            time.sleep(POLL_S)
        raise HardwayError(f"{r.node.name}: not healthy after {ctx.timeout:.0f}s: {last}; run "
                           "`invoke verify --chapter workers` for the cause")

    if (error := remote.first_error(remote.fan_out(ctx.inv, nodes, wait, connector=ctx.connector))):
        raise HardwayError(error)


def fix_steps(s: Survey) -> list[Step]:
    return s.steps if isinstance(s, WorkerSurvey) else []
