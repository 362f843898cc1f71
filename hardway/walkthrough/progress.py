"""Where a cluster is in the tutorial: each chapter's state from its real checks.

``not started``: nothing of the chapter is there yet (no node's deployment record names it, no PKI
file, no kubeconfig); ``done``: its checks pass; ``failing``: something of it is there and a check
fails; ``skipped``: every check needs what only the real Kubernetes binaries could prove (stand-ins).
Every node is asked once, for its deployment record: that also says whether it is reachable.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hardway import binaries, encryption, kubeconfig, remote
from hardway.chapters import pki as pki_chapter
from hardway.chapters.base import Context
from hardway.checks import FAIL, OK, SKIP, CheckResult, run_checks
from hardway.deploy import RECORD_FACT, Deployed
from hardway.facts import gather
from hardway.files import sha256_file
from hardway.pki.catalogue import CA_NAME
from hardway.walkthrough.tutorial import (
    ADMIN,
    BINARIES,
    CHAPTERS,
    CLEANUP,
    CLUSTER,
    MACHINES,
    NODES,
    PKI_PART,
    TOOLS,
    TutorialChapter,
)

NOT_STARTED, DONE, FAILING, SKIPPED = "not started", "done", "failing", "skipped"

# the jumpbox's tools (chapter 1) and the Debian package that has each
TOOLS_NEEDED = {"ssh": "openssh-client", "scp": "openssh-client", "openssl": "openssl", "curl": "curl",
                "systemd-analyze": "systemd"}
KUBECTL_PACKAGE = "kubernetes-client"  # Debian's name, as scripts/setup.sh installs it


@dataclass
class ChapterState:
    number: int
    slug: str
    title: str
    state: str
    detail: str
    task: str
    results: list[CheckResult] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {**{k: v for k, v in asdict(self).items() if k != "results"},
                "results": [asdict(r) for r in self.results]}


@dataclass
class Records:
    """Every node's deployment record (None: the node could not be asked, with why)."""

    records: dict[str, dict[str, Deployed] | None]
    errors: dict[str, str]

    def chapters_on(self, node: str) -> set[str]:
        return {d.chapter for d in (self.records.get(node) or {}).values()}

    def holds(self, chapter: str, nodes: Sequence[str]) -> bool:
        return any(chapter in self.chapters_on(n) for n in nodes)


def read_records(ctx: Context) -> Records:
    """One round trip per node, all nodes at once."""
    outcomes = remote.fan_out(ctx.inv, ctx.inv.nodes, lambda r: gather(r, [RECORD_FACT])[RECORD_FACT],
                              connector=ctx.connector)
    return Records({o.node.name: (o.value if o.ok else None) for o in outcomes},
                   {o.node.name: (o.error or "failed").removeprefix(f"{o.node.name}: ") for o in outcomes if not o.ok})


def judged(results: list[CheckResult], *, started: bool = True, why_not: str = "") -> tuple[str, str]:
    """State and detail from check results."""
    if not started:
        return NOT_STARTED, why_not
    fails = [r for r in results if r.status == FAIL]
    skips = sum(r.status == SKIP for r in results)
    oks = sum(r.status == OK for r in results)
    if fails:
        first = fails[0]
        where = "" if first.node in ("-", "") else f"{first.node}: "
        return FAILING, f"{len(fails)} check(s) fail; first: {where}{first.check}: {first.detail}"[:200]
    if results and skips == len(results):
        return SKIPPED, "every check skipped: " + results[0].detail[:120]
    return DONE, f"{oks} ok" + (f", {skips} skipped (stand-in)" if skips else "")


def _tools() -> list[CheckResult]:
    out = []
    for tool, package in TOOLS_NEEDED.items():
        where = shutil.which(tool)
        out.append(CheckResult("prerequisites", "tool", tool, OK, where) if where else
                   CheckResult("prerequisites", "tool", tool, FAIL, "not on PATH",
                               f"bash scripts/setup.sh (or apt-get install {package})"))
    return out


def _binaries(ctx: Context) -> list[CheckResult]:
    out = []
    for name, source in sorted(ctx.inv.binaries.items()):
        path = binaries.resolve(ctx.inv, name, ctx.cache_dir) if ctx.cache_dir else source.path
        if path is None or not path.is_file():
            fix = ("`invoke chapter 2 --apply` fetches it" if source.url else
                   f"put it at {source.path} or correct binaries.{name} in {ctx.inv.path}")
            out.append(CheckResult("jumpbox", "binary", name, FAIL, f"{path or source.url} not on the jumpbox", fix))
            continue
        sha = sha256_file(path)
        if source.sha256 and sha != source.sha256:
            out.append(CheckResult("jumpbox", "binary", name, FAIL, f"{path}: sha256 {sha[:16]}…, the inventory "
                                   f"pins {source.sha256[:16]}…", "replace the file or correct the sha256"))
        else:
            out.append(CheckResult("jumpbox", "binary", name, OK, f"{path} ({path.stat().st_size} bytes)"))
    kubectl = shutil.which("kubectl")
    out.append(CheckResult("jumpbox", "tool", "kubectl", OK, kubectl) if kubectl else
               CheckResult("jumpbox", "tool", "kubectl", FAIL, "not on PATH (chapters 10 and 12 use it)",
                           f"bash scripts/setup.sh (or apt-get install {KUBECTL_PACKAGE})"))
    return out


def _machines(ctx: Context, rec: Records) -> list[CheckResult]:
    return [CheckResult("compute-resources", "ssh", n.name, FAIL, rec.errors[n.name],
                        "`invoke lab.up` (the local lab), else start the machine and check the inventory's ssh section")
            if n.name in rec.errors else
            CheckResult("compute-resources", "ssh", n.name, OK, f"{ctx.inv.ssh.user}@{n.address} logs in "
                        "(host key known)") for n in ctx.inv.nodes]


def _pki_part(ctx: Context, part: str) -> tuple[list[CheckResult], bool]:
    state = ctx.state
    if part == "secret-mode":  # the encryption config
        started = state.encryption_config.exists()
        why = encryption.problem(ctx.inv, state)
        return ([CheckResult("encryption-keys", "encryption-config", "-", FAIL, why, "run `invoke pki`") if why else
                 CheckResult("encryption-keys", "encryption-config", "-", OK,
                             f"{state.encryption_config}: {ctx.inv.encryption_provider}, 0600")], started)
    results = [r for r in pki_chapter.results(ctx.inv, state) if r.check == part]
    if part == "certificate":
        return results, state.cert(CA_NAME).exists()
    return results, any(state.kubeconfig(s.name).exists() for s in kubeconfig.kubeconfig_specs(ctx.inv))


ADMIN_TARGET = Path.home() / ".kube" / "config"  # where `invoke kubeconfig.admin` writes by default


def _admin(ctx: Context, target: Path | None = None) -> tuple[list[CheckResult], bool]:
    target = target or ADMIN_TARGET
    spec = next(s for s in kubeconfig.kubeconfig_specs(ctx.inv) if s.name == "admin")
    if not target.exists():
        return [], False
    try:
        want = kubeconfig.render(ctx.inv, ctx.state, spec)
    except OSError as exc:
        return [CheckResult("kubectl", "admin-kubeconfig", "-", FAIL, f"cannot render it: {exc}",
                            "run `invoke pki`")], True
    if target.read_bytes() != want:
        return [CheckResult("kubectl", "admin-kubeconfig", "-", FAIL, f"{target} is another kubeconfig",
                            "`invoke kubeconfig.admin --force` (keeps the old one), or --out PATH")], True
    mode = target.stat().st_mode & 0o777
    if mode & 0o077:
        return [CheckResult("kubectl", "admin-kubeconfig", "-", FAIL, f"{target} is {mode:04o}: it holds the admin "
                            "key", f"chmod 600 {target}")], True
    return [CheckResult("kubectl", "admin-kubeconfig", "-", OK, f"{target}: admin through {spec.server}")], True


def _cleanup(ctx: Context, rec: Records) -> list[CheckResult]:
    out = []
    for n in ctx.inv.nodes:
        held = rec.records.get(n.name)
        if held:
            out.append(CheckResult("cleanup", "deployed", n.name, FAIL, f"holds {len(held)} file(s) hardway deployed",
                                   f"`invoke reset {n.name} --yes`, or `invoke lab.down` for the lab"))
        else:
            out.append(CheckResult("cleanup", "deployed", n.name, OK, "unreachable (down)" if held is None else
                                   "holds nothing hardway deployed"))
    return out


def chapter_state(ctx: Context, t: TutorialChapter, rec: Records, earlier_done: bool = True) -> ChapterState:
    """One tutorial chapter's state on this cluster."""
    started, why_not = True, ""
    if t.kind == TOOLS:
        results = _tools()
        started = any(r.status == OK for r in results)
    elif t.kind == BINARIES:
        results = _binaries(ctx)
        started = any(r.status == OK for r in results if r.check == "binary")
        why_not = "no binary the inventory names is on the jumpbox yet"
    elif t.kind == MACHINES:
        results = _machines(ctx, rec)
        started = len(rec.errors) < len(ctx.inv.nodes)
        why_not = f"no node answers ({next(iter(rec.errors.values()), '')})"
    elif t.kind == PKI_PART:
        results, started = _pki_part(ctx, t.part)
        why_not = f"nothing in {ctx.state.root} yet"
    elif t.kind == ADMIN:
        results, started = _admin(ctx)
        why_not = f"{ADMIN_TARGET} missing"
    elif t.kind == CLEANUP:
        results = _cleanup(ctx, rec)
        held = [r for r in results if r.status == FAIL]
        state = DONE if not held else NOT_STARTED
        detail = (f"{len(held)} node(s) hold files hardway deployed" if held else
                  "no node holds anything hardway deployed")
        return ChapterState(t.number, t.slug, t.title, state, detail, t.command, results)
    else:
        chapter = t.chapter()
        assert chapter is not None
        results = []
        if t.kind == NODES:
            targets = [n.name for n in chapter.targets(ctx.inv)]
            started = not targets or rec.holds(chapter.name, targets)  # no targets: its checks say what that means
            why_not = f"no node holds a file of chapter {chapter.name}"
        elif t.kind == CLUSTER:
            started, why_not = earlier_done, "the chapters before it are not done"
        if started:
            results = run_checks(chapter.checks(ctx))
    state, detail = judged(results, started=started, why_not=why_not)
    return ChapterState(t.number, t.slug, t.title, state, detail, t.command, results)


def states(ctx: Context, chapters: Sequence[TutorialChapter] = CHAPTERS) -> list[ChapterState]:
    """Every tutorial chapter's state, in order (the node records are read once, and only when a chapter
    needs them: the jumpbox chapters never dial a node)."""
    rec = read_records(ctx) if any(t.kind in (MACHINES, NODES, CLEANUP) for t in chapters) else Records({}, {})
    out: list[ChapterState] = []
    for t in chapters:
        earlier = all(s.state in (DONE, SKIPPED) for s in out if s.number < t.number and s.number != 13)
        out.append(chapter_state(ctx, t, rec, earlier))
    return out


def first_not_done(rows: Sequence[ChapterState]) -> ChapterState | None:
    """What `--next` does: the first chapter neither done nor skipped (cleanup is never next: it is a choice)."""
    return next((s for s in rows if s.state not in (DONE, SKIPPED) and s.slug != "cleanup"), None)
