"""The etcd chapter's checks: facts from every member in one round trip each, judged purely.

Blame follows evidence: each data dir's WAL head says whose member it holds (the same reading as
preflight), so a stale member is named as such and the members that merely log its `cluster ID
mismatch` are not. A journal signature counts only while it explains a failing member: on a
healthy member it is the echo of another's failure (warn, naming that member) or history (ok).
etcdctl is not asked where the unit is not running, and with short timeouts: with one member
stopped, verify answers in about a second ("2 of 3 members up, quorum kept, writes work").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardway import remote
from hardway.chapters.base import Context, ask
from hardway.chapters.etcd import cluster, datadir, quorum
from hardway.chapters.etcd.client_auth import client_auth_results
from hardway.chapters.etcd.files import UNIT, UNIT_PATH
from hardway.chapters.etcd.preflight import FSYNC_P99_LIMIT_MS, fsync_finding, fsync_p99
from hardway.chapters.etcd.signatures import SIGNATURES
from hardway.checks import FAIL, OK, SKIP, WARN, CheckResult
from hardway.facts import Fact, FactOutput, file_hashes, file_stats, gather, journal_since_start, unit_lint
from hardway.files import File, stamps
from hardway.inventory import Inventory, Node
from hardway.remote import Remote
from hardway.signatures import shorten
from hardway.systemd import exec_words

CHAPTER = "etcd"
WRITE_KEY = "/hardway/verify"  # verify proves writes work by writing /hardway/verify/<member>


def _text(out: FactOutput) -> str:
    return out.stdout


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


UNIT_TEXT: Fact[str] = Fact("unit_text", f"cat {UNIT_PATH} 2>/dev/null", _text, (UNIT_PATH,))


def write(inv: Inventory, node: Node) -> Fact[tuple[bool, str]]:
    """A real write through this member: a hardway key holding the node's clock."""
    put = cluster.quick_ctl(inv, node, f"put {WRITE_KEY}/{node.name} \"$(date +%s)\"")
    return Fact("etcd_write", cluster.guarded(put), _answer, (node.name,))


@dataclass
class MemberFacts:
    """What verify reads from one controller."""

    view: cluster.MemberView
    files: dict[str, tuple[int, str, str] | None] = field(default_factory=dict)
    hashes: dict[str, str | None] = field(default_factory=dict)
    referenced: dict[str, bool] = field(default_factory=dict)  # path in ExecStart -> exists
    lint: str = ""
    journal: str = ""
    fsync_p99_ms: float | None = None
    write: tuple[bool, str] = (False, "")


def referenced_paths(unit_text: str) -> set[str]:
    """The absolute paths a unit's ExecStart names (``--data-dir=/var/lib/etcd`` -> /var/lib/etcd)."""
    return {w.split("=", 1)[-1] for w in exec_words(unit_text) if w.split("=", 1)[-1].startswith("/") and "," not in w}


@dataclass(frozen=True)
class MemberAsk:
    """The facts verify asks one member, by role."""

    paths: list[str]
    rendered_refs: set[str]
    hashes: Fact
    stats: Fact
    lint: Fact
    journal: Fact
    fsync: Fact
    write: Fact
    cluster: list[Fact]

    def all(self) -> list[Fact]:
        return [self.hashes, self.stats, UNIT_TEXT, self.lint, self.journal, *self.cluster, self.write, self.fsync]


def member_ask(inv: Inventory, node: Node, files: list[File]) -> MemberAsk:
    paths = [x.path for x in files]
    unit = next((x for x in files if x.path == UNIT_PATH), None)
    rendered_refs = referenced_paths(unit.data().decode()) if unit is not None else set()
    return MemberAsk(paths, rendered_refs, file_hashes(paths, stamps(files)),
                     file_stats(sorted(set(paths) | rendered_refs)), unit_lint([UNIT_PATH]),
                     journal_since_start(UNIT), fsync_p99(inv.etcd.data_dir), write(inv, node),
                     cluster.facts(inv, node, release=False))  # no check reads the release: one process less


def gather_member(ctx: Context, r: Remote, files: list[File]) -> MemberFacts:
    """Everything verify needs from one member, in one round trip (plus one if a hand-edited unit names files
    the rendered one does not: what the rendered unit names is asked in the first), or none when this
    task's survey read it all and changed nothing. The survey's fsync figure is reused rather than
    measured again."""
    a = member_ask(ctx.inv, r.node, files)
    surveyed = ctx.surveyed.get(r.node.name)
    measured = surveyed is not None and a.fsync in surveyed
    # everything at once (etcdctl calls mostly wait on the network), but the disk probe after the rest
    # (it is ``alone``), so nothing else disturbs the figure: one exec
    v = ask(ctx, r, [x for x in a.all() if x is not a.fsync or not measured], timeout=60, parallel=True)
    f = MemberFacts(cluster.view_from(ctx.inv, r.node, v))
    f.hashes = v[a.hashes]
    f.files = {p: (st.mode, st.owner, st.group) if st else None for p, st in v[a.stats].items() if p in a.paths}
    f.lint = "\n".join(line for line in v[a.lint].splitlines() if "etcd" in line)
    f.journal, f.write = v[a.journal], v[a.write]
    f.fsync_p99_ms = surveyed[a.fsync] if surveyed is not None and measured else v[a.fsync]
    referenced = referenced_paths(v[UNIT_TEXT]) - set(a.paths)
    known = {p: v[a.stats][p] is not None for p in referenced & a.rendered_refs}
    if extra := sorted(referenced - a.rendered_refs):  # a hand-edited unit naming files the render does not
        found = gather(r, [file_stats(extra)])[file_stats(extra)]
        known |= {p: found[p] is not None for p in extra}
    f.referenced = known
    for p in a.paths:  # planned files are judged by hashes/modes; record them as referenced-present too
        if f.files.get(p) is not None:
            f.referenced.setdefault(p, True)
    return f


# --- judging ---------------------------------------------------------------------------------


@dataclass
class Together:
    """What one member's results need to know about the others."""

    view: cluster.ClusterView
    verdicts: dict[str, datadir.Verdict]
    failing: set[str]  # members that are not serving this cluster
    stale: list[str]  # members whose data dir is not this cluster's

    @property
    def serving(self) -> bool:
        return bool(self.view.in_cluster)


def together(inv: Inventory, facts: dict[str, MemberFacts]) -> Together:
    view = cluster.ClusterView(inv, {n: f.view for n, f in facts.items()})
    verdicts = view.verdicts()
    stale = [n for n, v in verdicts.items() if v.kind in (datadir.STALE, datadir.UNREADABLE)]
    serving = {v.node.name for v in view.in_cluster}
    failing = {n for n in facts if n not in serving or n in stale}
    return Together(view, verdicts, failing, stale)


def judge_member(inv: Inventory, node: Node, facts: MemberFacts, files: list[File],
                 others: Together | None = None) -> list[CheckResult]:
    """Pure: one member's facts (and what the others showed) -> results."""
    others = others or together(inv, {node.name: facts})
    n, v = node.name, facts.view
    res: list[CheckResult] = []

    def add(check: str, status: str, detail: str, hint: str = "") -> None:
        res.append(CheckResult(CHAPTER, check, n, status, detail, hint))

    if v.active == "active":
        add("unit-active", OK, "etcd is active")
    elif v.active == "inactive":
        add("unit-active", FAIL, "etcd is inactive (stopped)",
            f"start it: `invoke bootstrap-etcd` (starts stopped members, changes nothing else), or "
            f"`systemctl start etcd` on {n}")
    else:
        add("unit-active", FAIL, f"etcd is {v.active}", f"see the data-dir and journal results for {n}; "
                                                          f"`journalctl -u etcd` there")
    _unit_and_files(add, facts, files, res)
    _data_dir(add, inv, node, v, others)
    if v.active != "active":
        add("endpoint-health", SKIP, f"not asked: etcd is {v.active} here")
    elif v.healthy:
        add("endpoint-health", OK, (v.health.splitlines() or ["healthy"])[-1][:160])
    else:
        add("endpoint-health", FAIL, (v.health.splitlines() or ["no answer"])[-1][:160],
            "the member runs but does not serve: see its data-dir and journal results and the quorum result")
    add("disk-fsync", *judge_disk(inv, facts.fsync_p99_ms))
    _journal(add, inv, node, facts, others)
    return res


def judge_disk(inv: Inventory, p99: float | None) -> tuple[str, str, str]:
    """(status, detail, hint) for the data dir's fdatasync p99. Over etcd's 10 ms it is a warning (preflight's
    figure); at the heartbeat interval or more it fails: every WAL write then stalls the member longer than a
    heartbeat, and leaders get lost (`sync duration ... expected less than 1s`, elections)."""
    if p99 is not None and p99 >= inv.etcd.heartbeat_ms:
        return (FAIL, f"fdatasync p99 {p99:.0f} ms in {inv.etcd.data_dir}: slower than etcd's heartbeat "
                      f"({inv.etcd.heartbeat_ms} ms; etcd wants < {FSYNC_P99_LIMIT_MS:.0f} ms), so commits stall and "
                      "leaders are lost", f"move {inv.etcd.data_dir} to a faster disk (an SSD)")
    finding = fsync_finding(inv, "-", p99)
    return finding.status, finding.message, ""


def _unit_and_files(add, facts: MemberFacts, files: list[File], res: list[CheckResult]) -> None:
    unit = next((x for x in files if x.path == UNIT_PATH), None)
    if unit is not None:
        got = facts.hashes.get(UNIT_PATH)
        if got is None:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} is missing", "run `invoke bootstrap-etcd`")
        elif got != unit.sha256:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} differs from the rendered unit (hand-edited?)",
                "run `invoke bootstrap-etcd` to push the rendered unit and restart the member")
        else:
            add("unit-matches-render", OK, f"{UNIT_PATH} equals the rendered unit")
    if facts.lint:
        add("unit-lint", FAIL, "systemd says: " + " | ".join(facts.lint.splitlines()[:3]),
            "a broken line continuation or quoting; push the rendered unit (`invoke bootstrap-etcd`)")
    else:
        add("unit-lint", OK, "systemd-analyze verify: no warnings")
    before = len(res)
    for f in files:
        got_mode = facts.files.get(f.path)
        if got_mode is None:
            add("files", FAIL, f"{f.path} is missing", "run `invoke bootstrap-etcd` to push it")
        elif got_mode != (f.mode, f.owner, f.group):
            add("files", FAIL, f"{f.path} is {got_mode[0]:04o} {got_mode[1]}:{got_mode[2]}, want "
                               f"{f.mode:04o} {f.owner}:{f.group}", "run `invoke bootstrap-etcd` to fix it")
        elif facts.hashes.get(f.path) != f.sha256:
            add("files", FAIL, f"{f.path} differs from what hardway planned",
                "run `invoke bootstrap-etcd` (after `invoke pki` if certificates changed)")
    for p in [p for p, ok in facts.referenced.items() if not ok]:
        add("files", FAIL, f"the unit references {p}, which does not exist", "run `invoke bootstrap-etcd`")
    if len(res) == before:
        add("files", OK, f"{len(files)} files present with the planned content and mode")


def _data_dir(add, inv: Inventory, node: Node, v: cluster.MemberView, others: Together) -> None:
    verdict = others.verdicts.get(node.name)
    if verdict is None:
        return
    if verdict.kind == datadir.OURS:
        add("data-dir", OK, verdict.detail)
    elif verdict.kind == datadir.EMPTY:
        add("data-dir", WARN, verdict.detail, "`invoke bootstrap-etcd` joins it to the cluster as a new member")
    elif verdict.kind == datadir.CLUTTERED:
        add("data-dir", FAIL, verdict.detail, f"move it aside: on {node.name}, "
                                              f"`systemctl stop etcd; {datadir.move_aside(inv.etcd.data_dir)}`")
    else:
        add("data-dir", FAIL, verdict.detail, datadir.stale_fix(inv, node, others.serving).removeprefix("fix: "))


def _journal(add, inv: Inventory, node: Node, facts: MemberFacts, others: Together) -> None:
    """A signature counts while it explains a failing member: here, or (peer echoes) another one.

    A member stopped by hand is not explained by its journal (that is history from its last run);
    a cluster ID mismatch explains nothing once no data dir is stale."""
    n = node.name
    crashed = n in others.failing and facts.view.active != "inactive"
    elsewhere = sorted(others.failing - {n})
    stale = others.stale[0] if others.stale else ""
    seen = False
    for sig in SIGNATURES:
        line = sig.first_line(facts.journal)
        if line is None:
            continue
        seen = True
        fix = sig.fix.format(node=n, stale=stale or n, data_dir=inv.etcd.data_dir)
        quoted = f"“{shorten(line)}”"
        explains = not sig.needs_stale or bool(stale)
        if crashed and explains:
            add("journal", FAIL, f"{sig.cause}: {quoted}", fix)
        elif sig.about_peers and elsewhere and explains:
            add("journal", WARN, f"{quoted}: the echo of {', '.join(elsewhere)} failing ({sig.cause})", fix)
        elif sig.latent:
            add("journal", WARN, f"{sig.cause}: {quoted}", fix)
        else:
            now = "it is stopped (see unit-active)" if n in others.failing else "this member serves"
            add("journal", OK, f"an earlier {quoted} ({sig.name}) explains no failure now: {now}")
    if not seen:
        add("journal", OK, "no known failure signature since the unit last started")


def judge(inv: Inventory, facts: dict[str, MemberFacts], files: dict[str, list[File]]) -> list[CheckResult]:
    """Pure: every member's results, then the cluster's (membership, leader, quorum and writes)."""
    others = together(inv, facts)
    results: list[CheckResult] = []
    for node in inv.controllers:
        if node.name in facts:
            results.extend(judge_member(inv, node, facts[node.name], files[node.name], others))
    results.extend(quorum.judge_cluster(inv, others.view, {n: f.write for n, f in facts.items()}))
    return results


def verify(ctx: Context, files: dict[str, list[File]]) -> list[CheckResult]:
    """Every member's unit, files, data dir, health, disk and journal; the cluster; client auth."""
    inv = ctx.inv
    outcomes = remote.fan_out(inv, inv.controllers,
                              lambda r: gather_member(ctx, r, files[r.node.name]),
                              connector=ctx.connector)
    results: list[CheckResult] = []
    facts: dict[str, MemberFacts] = {}
    for o in outcomes:
        if not o.ok or o.value is None:
            results.append(CheckResult(CHAPTER, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                       "start the machine / fix SSH; the other members keep quorum only if a "
                                       "majority is up"))
            continue
        facts[o.node.name] = o.value
    results.extend(judge(inv, facts, files))
    # ask a member that is serving, so a stopped one does not turn this check into "unreachable"
    probe = next((n for n in inv.controllers if n.name in facts and facts[n.name].view.healthy), inv.controllers[0])
    results.extend(client_auth_results(inv, ctx.state, probe))
    return results
