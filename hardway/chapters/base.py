"""A chapter: one step of building the cluster, as one module and one registry line.

After k0sctl's phases. A chapter says which nodes it targets, which files each receives (pure),
what it must know about a node before touching it (facts) and how it judges them, how it starts
its services and waits until they are healthy, how one of its services is restarted on one node
(rotation uses this), and its checks. ``Chapter.apply`` is the shared flow::

    survey  (one round trip per node: the chapter's facts, the disk, the record, unit states)
      -> judge (pure)          stop here, nothing changed, if anything failed or a file is foreign
      -> push + follow-up      one exec per node: install changed files, the chapter's steps (routes,
                               live sysctls: commands computed from facts), daemon-reload, enable, start
      -> settle                wait healthy; restart running services whose files changed, rolling
      -> finish                steps that need every service up (the control plane's RBAC)
      -> checks

A chapter that changes more than files and services (pod routes, ``--fix``) returns ``Step``s from
``node_steps``, a pure function of the survey's facts, run in the push's exec; one that touches no
node at all (the smoke test) overrides ``apply``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hardway import deploy, remote, services
from hardway.checks import FAIL, Check, CheckResult, run_checks
from hardway.deploy import PushPlan, PushReport
from hardway.errors import HardwayError
from hardway.facts import Fact, FactValues, FileStat, UnitState, gather, only_where, unit_states
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.planner import Planner, files_for
from hardway.remote import Connector, Progress, Remote
from hardway.signatures import Signature
from hardway.state import PkiState


@dataclass(frozen=True)
class Finding:
    """One preflight judgment about a node ("-": the jumpbox)."""

    node: str
    status: str  # ok / warn / fail
    message: str


@dataclass(frozen=True)
class Step:
    """A change on a node other than a file or a service: ``what`` for people, ``command`` to do it."""

    what: str  # "route 10.200.1.0/24 via 10.77.0.21 added"
    command: str


@dataclass
class Context:
    """Everything a chapter works with during one task."""

    inv: Inventory
    state: PkiState
    cache_dir: Path | None = None
    connector: Connector = remote.connect
    progress: Progress = field(default_factory=Progress)
    timeout: float = 90.0
    adopt: bool = False  # replace foreign files at planned paths (keeping a backup)
    fix: bool = False  # persist what preflight found fixable (chapters that offer fixes: `--fix`)
    _files: dict[tuple[str, str], list[File]] = field(default_factory=dict, repr=False)
    # node -> what the survey read from its disk (hashes, stats), while nothing was pushed there since:
    # the checks that follow an apply need not hash the same files again
    disk: dict[str, tuple[dict[str, str | None], dict[str, FileStat | None]]] = field(default_factory=dict,
                                                                                      repr=False)
    # node -> every fact the survey read this task: a check may reuse a measurement instead of taking
    # it again seconds later (etcd's fsync probe)
    surveyed: dict[str, FactValues] = field(default_factory=dict, repr=False)
    # node -> what the survey read, while this task has changed nothing on any node: the checks judge
    # these (the survey asked the checks' facts too) instead of asking again, one round trip saved
    unchanged: dict[str, FactValues] = field(default_factory=dict, repr=False)

    def files(self, chapter: Chapter, node: Node) -> list[File]:
        """What ``chapter`` puts on ``node``; planned once per task (binaries are hashed once)."""
        key = (chapter.name, node.name)
        if key not in self._files:
            self._files[key] = files_for(self.inv, node, self.state, [chapter], self.cache_dir)
        return self._files[key]


@dataclass
class Survey:
    """What one node looked like before the chapter touched it, and what the push will do."""

    node: Node
    files: list[File]
    facts: FactValues
    push: PushPlan
    findings: list[Finding]
    sweep: list[str] = field(default_factory=list)  # staging dirs of killed runs
    stats: dict[str, FileStat | None] = field(default_factory=dict)
    states: dict[str, UnitState] = field(default_factory=dict)  # the chapter's units, before
    hold: tuple[str, ...] = ()  # units the push installs but leaves for the chapter's settle to start


@dataclass
class ApplyReport:
    chapter: str
    findings: list[Finding]
    written: dict[str, list[str]]  # node -> paths written
    started: dict[str, list[str]]  # node -> units started
    restarted: dict[str, list[str]]  # node -> units restarted
    results: list[CheckResult]
    seconds: float
    bytes_sent: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: where the time went
    steps: dict[str, list[str]] = field(default_factory=dict)  # node -> what its Steps did
    labels: dict[str, str] = field(default_factory=dict)  # unit -> how to show it ("kube-apiserver (stand-in)")
    notes: list[str] = field(default_factory=list)  # what the chapter's finishing steps did (RBAC, ...)

    def summary(self) -> str:
        files = sum(len(v) for v in self.written.values())
        done = "".join(f"; {n}: {', '.join(v)}" for n, v in self.steps.items() if v)
        notes = "".join(f"; {n}" for n in self.notes)
        if not files and not self.started and not self.restarted:
            return f"{self.chapter}: nothing changed: 0 files written, 0 restarts{done}{notes}" if not done else \
                f"{self.chapter}: 0 files written, 0 restarts{done}{notes}"

        def units(d: dict[str, list[str]]) -> str:
            return ", ".join(f"{' '.join(self.labels.get(u, u) for u in v)} on {n}" for n, v in d.items()) or "none"

        mb, push = self.bytes_sent / 1e6, self.phases.get("push", 0.0)
        sent = f" ({mb:.1f} MB at {mb / push:.0f} MB/s)" if mb >= 0.05 and push else ""
        return (f"{self.chapter}: {files} file(s) written on {sum(1 for v in self.written.values() if v)} "
                f"node(s){sent}, started {units(self.started)}, restarted {units(self.restarted)}{done}{notes}")


def restart_unit(ctx: Context, node: Node, unit: str, shown: str | None = None) -> None:
    """``systemctl restart unit`` on one node, said as ``shown`` (e.g. "kube-apiserver (stand-in)")."""
    r = ctx.connector(ctx.inv, node)
    try:
        ctx.progress(node, f"restart {shown or unit}")
        services.systemctl(r, "restart", unit, timeout=int(ctx.timeout))
    finally:
        r.close()


def hashes_fact_of(survey: Survey) -> Fact | None:
    """The survey's file-hashes fact (to reuse what it read), if it asked one."""
    fact = deploy.disk_facts(survey.files)[0]
    return fact if fact in survey.facts else None


def ask(ctx: Context, r: Remote, facts: Sequence[Fact], timeout: int | None = None, *, parallel: bool = False,
        ) -> FactValues:
    """``gather``, answered from the survey when this task changed nothing and the survey read them all."""
    have = ctx.unchanged.get(r.node.name)
    if have is not None and all(f in have for f in facts):
        return have
    return gather(r, facts, timeout, parallel=parallel)


def foreign_findings(node: Node, push: PushPlan, task: str) -> list[Finding]:
    """A file hardway did not deploy at a planned path: the survey's one line naming node and path."""
    if not push.foreign:
        return []
    return [Finding(node.name, FAIL, str(deploy.foreign_error(node.name, push.foreign, f"invoke {task}"))
                    .removeprefix(f"{node.name}: "))]


def survey_all(ctx: Context, chapter: Chapter, nodes: Sequence[Node], look: Callable[[Remote], Survey],
               ) -> list[Survey]:
    """``look`` at every node in parallel; a node that cannot be asked is a failed finding of its own."""
    surveys = []
    for o in remote.fan_out(ctx.inv, nodes, look, connector=ctx.connector):
        if o.ok and o.value is not None:
            surveys.append(o.value)
        else:
            error = (o.error or "failed").removeprefix(f"{o.node.name}: ")
            surveys.append(Survey(o.node, ctx.files(chapter, o.node), FactValues({}), PushPlan(),
                                  [Finding(o.node.name, FAIL, error)], []))
    return surveys


def first_failure(findings: Sequence[Finding]) -> HardwayError | None:
    failures = [f for f in findings if f.status == FAIL]
    if not failures:
        return None
    first = failures[0]
    more = f" (and {len(failures) - 1} more problem(s) above)" if len(failures) > 1 else ""
    where = "" if first.node == "-" or first.message.startswith(first.node) else f"{first.node}: "
    return HardwayError(f"preflight failed, nothing was changed: {where}{first.message}{more}")


class Chapter:
    """Override what differs; the defaults fit a chapter of plain systemd services."""

    name: str = ""
    title: str = ""
    summary: str = ""  # two or three sentences: what this chapter is for
    task: str = ""  # the invoke task that applies it, named in hints
    applied_by_task: bool = False  # tasks/chapters.py makes `invoke <task>` run ``apply`` (node chapters)
    units: tuple[str, ...] = ()  # its services, in start and restart order
    binaries: tuple[str, ...] = ()  # binaries it installs (the lab hides the host's copies)
    no_block_start: bool = False  # Type=notify units that only come up together (etcd)
    # run the survey's facts at the same time on a node (a fact that measures latency is marked ``alone``: it
    # runs after the rest)
    survey_at_once: bool = False
    signatures: tuple[Signature, ...] = ()  # journal lines of its services that name a cause (verify, diagnose)
    fixable: bool = False  # its task takes --fix: preflight's fixable findings are repaired (Context.fix)

    def __repr__(self) -> str:
        return f"<chapter {self.name}>"

    # --- what and where (pure) ----------------------------------------------------------------

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return ()

    def plan_files(self, p: Planner) -> None:
        """Add the files ``p.node`` receives from this chapter."""

    def node_units(self, node: Node) -> tuple[str, ...]:
        """Which of ``units`` run on ``node`` (a chapter over nodes of several roles narrows it)."""
        return self.units

    def unit_label(self, inv: Inventory, unit: str) -> str:
        """How progress lines and the summary name ``unit`` (a chapter marks its stand-ins here)."""
        return unit

    # --- preflight: facts, then pure judgment -------------------------------------------------

    def jumpbox_findings(self, ctx: Context, files: dict[str, list[File]]) -> list[Finding]:
        """Judgments made on the jumpbox before any node is asked (binaries, flags)."""
        return []

    def node_facts(self, ctx: Context, node: Node, files: list[File]) -> list[Fact]:
        return []

    def check_facts(self, ctx: Context, node: Node, planned: list[File]) -> list[Fact]:
        """The facts the checks ask ``node`` in their first round trip, as they ask them after an apply
        that pushed nothing there: an apply's survey reads them too where the node's record lists this
        chapter (a fresh node has nothing to check yet), so a re-run that changes nothing judges its
        checks without asking again (``ask``)."""
        return []

    def judge(self, ctx: Context, node: Node, facts: FactValues) -> list[Finding]:
        return []

    def judge_together(self, ctx: Context, surveys: Sequence[Survey]) -> list[Finding]:
        """Judgments only the nodes together allow (whose data is current); may set ``Survey.hold``."""
        return []

    # --- apply --------------------------------------------------------------------------------

    def survey(self, ctx: Context, nodes: Sequence[Node] | None = None, *, checks: bool = False) -> list[Survey]:
        """Preflight every target in parallel, one round trip each; unreachable nodes are findings.
        ``checks``: read the checks' facts too (an apply's survey; a preview asks nothing it need not,
        and etcd's checks write a key)."""
        nodes = self.targets(ctx.inv) if nodes is None else nodes
        planned = {n.name: ctx.files(self, n) for n in nodes}

        def look(r: Remote) -> Survey:
            ctx.progress(r.node, f"preflight {self.name}")
            files = planned[r.node.name]
            hashes_fact, stats_fact, *_ = disk = deploy.disk_facts(files)
            states_fact = unit_states(self.node_units(r.node))
            asked = [*self.node_facts(ctx, r.node, files), *disk, states_fact]
            if checks:  # only where the chapter is deployed: on a fresh node the checks would read nothing yet
                have = {f.key for f in asked}
                asked += [only_where(deploy.holds(self.name), f) for f in self.check_facts(ctx, r.node, files)
                          if f.key not in have]
            facts = gather(r, asked, parallel=self.survey_at_once).answered()
            push = deploy.plan_push(files, facts[hashes_fact], facts[stats_fact], facts[deploy.RECORD_FACT],
                                    adopt=ctx.adopt)
            findings = [*self.judge(ctx, r.node, facts), *foreign_findings(r.node, push, self.task)]
            return Survey(r.node, files, facts, push, findings, deploy.sweepable(facts[deploy.STAGING_FACT]),
                          facts[stats_fact], facts[states_fact])

        return survey_all(ctx, self, nodes, look)

    def node_steps(self, ctx: Context, survey: Survey) -> list[Step]:
        """Changes beyond files and services, from the survey's facts (pure); run after the files are
        in place and before services start, in the push's exec."""
        return []

    def follow_up(self, ctx: Context, survey: Survey, written: Sequence[str]) -> services.StartPlan:
        """What the node's units need once the push is in place (run in the push's own exec)."""
        return services.plan_start(self.node_units(survey.node), written, survey.files, survey.stats, survey.states,
                                   hold=survey.hold)

    def apply(self, ctx: Context) -> ApplyReport:
        t0 = time.monotonic()
        phases: dict[str, float] = {}
        clock = [t0]

        def lap(phase: str) -> None:
            now = time.monotonic()
            phases[phase] = now - clock[0]
            clock[0] = now

        nodes = self.targets(ctx.inv)
        findings = self.jumpbox_findings(ctx, {n.name: ctx.files(self, n) for n in nodes})
        lap("plan+jumpbox")
        if (err := first_failure(findings)) is not None:
            raise err
        surveys = self.survey(ctx, nodes, checks=True)
        lap("survey")
        findings += [f for s in surveys for f in s.findings]
        if not first_failure(findings):  # judged together only once each node could be asked
            findings += self.judge_together(ctx, surveys)
        for f in findings:
            ctx.progress(f.node, f"{f.status}: {f.message}")
        if (err := first_failure(findings)) is not None:
            raise err
        by_name = {s.node.name: s for s in surveys}
        for s in surveys:
            ctx.surveyed[s.node.name] = s.facts
            if s.push.idle and hashes_fact_of(s) is not None:
                ctx.disk[s.node.name] = (s.facts[hashes_fact_of(s)], s.stats)
        start_plans: dict[str, services.StartPlan] = {}
        steps = {s.node.name: self.node_steps(ctx, s) for s in surveys}

        def push(r: Remote) -> PushReport:
            s = by_name[r.node.name]
            start = self.follow_up(ctx, s, [f.path for f in s.push.write])
            start_plans[r.node.name] = start
            then = [st.command for st in steps[r.node.name]]
            report = deploy.push(r, s.push, sweep=s.sweep,
                                 then=then + services.start_commands(start, no_block=self.no_block_start))
            for st in steps[r.node.name]:
                ctx.progress(r.node, st.what)
            ctx.progress(r.node, f"pushed {len(report.written)} changed file(s)" if report.written
                         else "files up to date")
            if start.start:
                ctx.progress(r.node, f"start {' '.join(self.unit_label(ctx.inv, u) for u in start.start)}")
            return report

        pushed = remote.fan_out(ctx.inv, nodes, push, connector=ctx.connector)
        lap("push")
        written = {o.node.name: (o.value.written if o.value else []) for o in pushed}
        if (error := remote.first_error(pushed)) is not None:
            done = ", ".join(f"{o.node.name} ({len(o.value.written)} files)" for o in pushed
                             if o.ok and o.value) or "none"
            raise HardwayError(f"push failed on {error}; pushed to: {done}; fix and re-run `invoke {self.task}` "
                               "(it converges)")
        started = {n: [*p.start, *p.hold] for n, p in start_plans.items() if p.start or p.hold}  # held: settle starts
        restarted = self.settle(ctx, nodes, start_plans)
        lap("settle")
        notes = self.finish(ctx)
        if notes:
            lap("finish")
        fixed = any(o.value.fixed for o in pushed if o.value)
        if not (any(written.values()) or fixed or started or restarted or any(steps.values())):
            ctx.unchanged = {s.node.name: s.facts for s in surveys}
        try:
            results = self.verify(ctx)
        finally:
            ctx.unchanged = {}
        lap("checks")
        return ApplyReport(self.name, findings, written, started, restarted, results, time.monotonic() - t0,
                           sum(o.value.bytes_sent for o in pushed if o.value), phases,
                           steps={n: [st.what for st in v] for n, v in steps.items() if v},
                           labels={u: self.unit_label(ctx.inv, u) for u in self.units}, notes=notes)

    def settle(self, ctx: Context, nodes: Sequence[Node], plans: dict[str, services.StartPlan]) -> dict[str, list[str]]:
        """Wait for what was started; then restart, one node at a time, what runs on old files."""
        starting = [n for n in nodes if plans[n.name].start]
        self.wait_healthy(ctx, starting, {n.name: plans[n.name].start for n in starting})
        restarted: dict[str, list[str]] = {}
        for unit in self.units:
            for n in nodes:
                if unit in plans[n.name].restart:
                    self.restart(ctx, n, unit)
                    restarted.setdefault(n.name, []).append(unit)
        return restarted

    def finish(self, ctx: Context) -> list[str]:
        """Steps that need every service up, after settle and before the checks (the control plane's
        RBAC); returns a line per step for the summary."""
        return []

    def wait_healthy(self, ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
        """Until every given unit on every given node is healthy (default: systemd says active)."""

        def wait(r: Remote) -> None:
            waited = services.wait_active(r, units[r.node.name], ctx.timeout)
            ctx.progress(r.node, f"{' '.join(units[r.node.name])} active after {waited:.1f}s")

        if (error := remote.first_error(remote.fan_out(ctx.inv, nodes, wait, connector=ctx.connector))):
            raise HardwayError(error)

    def restart(self, ctx: Context, node: Node, unit: str) -> None:
        """Restart one of this chapter's units on one node and wait until it is healthy again."""
        restart_unit(ctx, node, unit)
        self.wait_healthy(ctx, [node], {node.name: [unit]})

    # --- reset (day 2) ---------------------------------------------------------------------------

    def data_dirs(self, inv: Inventory) -> tuple[str, ...]:
        """Where its services keep state on their nodes: `invoke reset` moves these aside, never deletes."""
        return ()

    def reset_commands(self, ctx: Context, node: Node) -> list[str]:
        """What undoes this chapter on ``node`` besides its files and units (pod routes: `ip route del ...`)."""
        return []

    # --- verify -------------------------------------------------------------------------------

    def checks(self, ctx: Context) -> list[Check]:
        return []

    def verify(self, ctx: Context) -> list[CheckResult]:
        return run_checks(self.checks(ctx))

