"""What a chapter puts where, how to type it by hand, and what it would change now.

All three read the plan the apply uses (``Context.files``, i.e. hardway.planner.files_for over the
chapter's ``plan_files``); the changes come from the chapter's own survey (the facts its apply
gathers: file hashes and stats, the deployment record, unit states) and ``deploy.plan_push``.
Secrets are never shown: not their bytes, not a diff; a line says that one differs.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hardway import remote
from hardway.chapters.base import Chapter, Context, Survey, hashes_fact_of
from hardway.facts import file_text, gather
from hardway.files import File
from hardway.inventory import Node
from hardway.paths import UNIT_DIR
from hardway.planner import Planner
from hardway.walkthrough import manual

DIFF_MAX_BYTES = 256 * 1024  # a bigger text file is summarised, not diffed


def kind(f: File) -> str:
    if f.secret:
        return "secret"
    if f.source is not None:
        return "binary"
    if f.path.startswith(f"{UNIT_DIR}/"):
        return "unit"
    return "text" if manual.is_text(f.data()) else "data"


@dataclass(frozen=True)
class FileRow:
    node: str
    path: str
    mode: str
    owner: str
    size: int
    sha256: str
    kind: str
    copied_from: str  # the jumpbox file it is copied from by hand ("" if typed)


def planned(ctx: Context, chapter: Chapter) -> dict[str, list[File]]:
    """node -> the chapter's files for it (nodes it does not target are left out)."""
    return {n.name: ctx.files(chapter, n) for n in chapter.targets(ctx.inv)}


class _SourcedPlanner(Planner):
    """Remembers the jumpbox file each PKI file comes from (to copy it by hand instead of printing it)."""

    def pki(self, target: str, source: Path, services, secret: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.sources[target] = source
        super().pki(target, source, services, secret)


def sources(ctx: Context, chapter: Chapter, node: Node) -> dict[str, Path]:
    """target path -> the jumpbox file it can be copied from: the PKI state, else the render's output."""
    p = _SourcedPlanner(ctx.inv, node, ctx.state, ctx.cache_dir, chapter=chapter.name)
    p.sources = {}
    chapter.plan_files(p)
    rendered = build_dir(ctx) / node.name
    for f in p.files:  # the rest (a program too big to type) is copied from `invoke render`'s output
        if f.source is None and f.path not in p.sources:
            p.sources[f.path] = rendered / f.path.lstrip("/")
    return p.sources


Planned = dict[str, list[File]]  # node -> its files: the pure plan, or what a survey planned from the node's facts


def _files(ctx: Context, chapter: Chapter, node: Node, planned: Planned | None) -> list[File]:
    return planned[node.name] if planned and node.name in planned else ctx.files(chapter, node)


def file_rows(ctx: Context, chapter: Chapter, planned: Planned | None = None) -> list[FileRow]:
    rows = []
    for node in chapter.targets(ctx.inv):
        src = sources(ctx, chapter, node)
        for f in _files(ctx, chapter, node, planned):
            origin = manual.copy_source(f, src)
            rows.append(FileRow(node.name, f.path, f"{f.mode:04o}", f"{f.owner}:{f.group}", f.size, f.sha256,
                                kind(f), str(origin) if origin else ""))
    return rows


def unit_texts(ctx: Context, chapter: Chapter, planned: Planned | None = None) -> dict[str, dict[str, str]]:
    """unit path -> node -> its rendered text (units are never secret)."""
    out: dict[str, dict[str, str]] = {}
    for node in chapter.targets(ctx.inv):
        for f in _files(ctx, chapter, node, planned):
            if kind(f) == "unit":
                out.setdefault(f.path, {})[node.name] = f.data().decode()
    return out


def build_dir(ctx: Context) -> Path:
    """Where `invoke render` writes this cluster's files (its default: next to the binaries' cache)."""
    root = ctx.cache_dir.parent if ctx.cache_dir is not None else Path("build")
    return root / ctx.inv.cluster_name


def render_command(ctx: Context, node: Node) -> str:
    """The `invoke render` that writes ``node``'s files where the copy commands take them from."""
    return (f"invoke render --node {shlex.quote(node.name)} --inventory {shlex.quote(str(ctx.inv.path))} "
            f"--pki-dir {shlex.quote(str(ctx.state.root))} --out {shlex.quote(str(build_dir(ctx)))}")


def has_steps(chapter: Chapter) -> bool:
    """Whether the chapter changes more than files and services (routes, --fix): computed from facts."""
    return type(chapter).node_steps is not Chapter.node_steps


def manual_sections(ctx: Context, chapter: Chapter, planned: Planned | None = None,
                    steps: dict[str, list[str]] | None = None) -> list[manual.Section]:
    """By hand, node after node: what to copy from the jumpbox, then what to type on the node. ``steps``:
    node -> the chapter's own commands from its survey (the routes a node lacks), typed after the files."""
    out = []
    for node in chapter.targets(ctx.inv):
        files, src = _files(ctx, chapter, node, planned), sources(ctx, chapter, node)
        copy = manual.jumpbox_section(ctx.inv, node, chapter.name, files, src, render_command(ctx, node))
        if copy is not None:
            out.append(copy)
        extra = list((steps or {}).get(node.name, []))
        if not extra and steps is None and has_steps(chapter):
            extra = [f"# and the chapter's own steps on {node.name}, from what it holds now: "
                     f"`invoke chapter {chapter.name} --only commands,changes` asks it"]
        out.append(manual.node_section(node, chapter.name, files, src, chapter.node_units(node),
                                       no_block=chapter.no_block_start, extra=extra))
    return out


# --- what it would change now ---------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    node: str
    what: str  # "new", "differs", "mode", "foreign", "start", "restart", "step", "preflight"
    path: str  # a file, a unit, or "-"
    detail: str


@dataclass
class Changes:
    rows: list[Change] = field(default_factory=list)
    diffs: list[tuple[str, str, str]] = field(default_factory=list)  # node, path, unified diff
    # what the apply would install on each node surveyed: where a chapter plans from facts (the workers'
    # resolvConf), this, not the pure plan, is what the files and the typed commands must show
    planned: Planned = field(default_factory=dict)
    steps: dict[str, list[str]] = field(default_factory=dict)  # node -> the chapter's own commands (routes)

    def to_json(self) -> dict[str, object]:
        return {"changes": [asdict(c) for c in self.rows],
                "diffs": [{"node": n, "path": p, "diff": d} for n, p, d in self.diffs]}


def _diffable(f: File) -> bool:
    return kind(f) in ("unit", "text") and f.size <= DIFF_MAX_BYTES


def _survey_changes(ctx: Context, chapter: Chapter, s: Survey, texts: dict[str, str | None]) -> Changes:
    out = Changes()
    node = s.node.name
    hashes = s.facts[hashes_fact_of(s)] if hashes_fact_of(s) is not None else {}
    for f in s.push.write:
        new = hashes.get(f.path) is None
        if new:
            out.rows.append(Change(node, "new", f.path, f"{kind(f)}, {f.mode:04o} {f.owner}:{f.group}, {f.size} bytes"))
            continue
        if f.secret:
            out.rows.append(Change(node, "differs", f.path, f"(secret, {f.mode:04o}, differs)"))
        elif not _diffable(f):
            out.rows.append(Change(node, "differs", f.path, f"({kind(f)}, {f.size} bytes, sha256 {f.sha256[:12]}…)"))
        else:
            have = texts.get(f.path)
            want = f.data().decode()
            diff = "".join(difflib.unified_diff((have or "").splitlines(keepends=True), want.splitlines(keepends=True),
                                                f"{node}:{f.path} (now)", f"{node}:{f.path} (planned)"))
            out.rows.append(Change(node, "differs", f.path, f"{diff.count(chr(10))} diff line(s) below"))
            out.diffs.append((node, f.path, diff))
    for f in s.push.fix:
        st = s.stats.get(f.path)
        now = f"{st.mode:04o} {st.owner}:{st.group}" if st else "?"
        out.rows.append(Change(node, "mode", f.path, f"{now} -> {f.mode:04o} {f.owner}:{f.group}"))
    for f in s.push.foreign:
        out.rows.append(Change(node, "foreign", f.path, "not deployed by hardway: refused unless --adopt"))
    start = chapter.follow_up(ctx, s, [f.path for f in s.push.write])
    for unit in start.start + start.hold:
        out.rows.append(Change(node, "start", unit, chapter.unit_label(ctx.inv, unit)))
    for unit in start.restart:
        out.rows.append(Change(node, "restart", unit, "its files changed (one node at a time, each healthy first)"))
    for step in chapter.node_steps(ctx, s):
        out.rows.append(Change(node, "step", "-", f"{step.what}: {step.command}"))
    for finding in s.findings:
        if finding.status != "ok":
            out.rows.append(Change(node, "preflight", "-", f"{finding.status}: {finding.message}"))
    return out


def changes(ctx: Context, chapter: Chapter) -> Changes:
    """Ask every target node what it holds (the chapter's own survey), then decide as the apply would."""
    nodes = chapter.targets(ctx.inv)
    out = Changes()
    for finding in chapter.jumpbox_findings(ctx, planned(ctx, chapter)):
        if finding.status != "ok":
            out.rows.append(Change(finding.node, "preflight", "-", f"{finding.status}: {finding.message}"))
    surveys = chapter.survey(ctx, nodes)
    texts = _current_texts(ctx, surveys)
    for s in surveys:
        if s.facts:  # answered: its files were planned from its facts, its steps computed from them
            out.planned[s.node.name] = s.files
            out.steps[s.node.name] = [st.command for st in chapter.node_steps(ctx, s)]
        part = _survey_changes(ctx, chapter, s, texts.get(s.node.name, {}))
        out.rows += part.rows
        out.diffs += part.diffs
    return out


def _current_texts(ctx: Context, surveys: Sequence[Survey]) -> dict[str, dict[str, str | None]]:
    """The current text of each planned text file that differs (never a secret): one round trip per node."""
    wanted = {s.node.name: [f.path for f in s.push.write if _diffable(f)] for s in surveys}
    nodes = [s.node for s in surveys if wanted[s.node.name]]
    if not nodes:
        return {}

    def read(r: remote.Remote) -> dict[str, str | None]:
        facts = [file_text(p) for p in wanted[r.node.name]]
        got = gather(r, facts)
        return {p: got[f] for p, f in zip(wanted[r.node.name], facts, strict=True)}

    return {o.node.name: o.value for o in remote.fan_out(ctx.inv, nodes, read, connector=ctx.connector)
            if o.ok and o.value is not None}


@dataclass(frozen=True)
class Delivery:
    """A jumpbox file and where a node chapter puts it."""

    jumpbox: str
    node: str
    path: str
    mode: str
    chapter: str


def deliveries(ctx: Context, chapters: Sequence[Chapter]) -> list[Delivery]:
    """Every PKI file the node chapters push, and where (what chapters 4-6 make, seen from the nodes)."""
    out = []
    for chapter in chapters:
        for node in chapter.targets(ctx.inv):
            src = sources(ctx, chapter, node)
            for f in ctx.files(chapter, node):
                origin = src.get(f.path)
                if origin is not None and ctx.state.root in origin.parents:
                    out.append(Delivery(str(origin.relative_to(ctx.state.root)), node.name, f.path, f"{f.mode:04o}",
                                        chapter.name))
    return out
