"""`invoke chapter` as text and as JSON: the list of chapters, and one chapter's page."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import asdict

from hardway.chapters import REGISTRY
from hardway.chapters.base import Context
from hardway.table import format_table
from hardway.walkthrough import progress, tutorial, view
from hardway.walkthrough.tutorial import TutorialChapter

SECTIONS = ("files", "commands", "changes")
# which PKI state files each jumpbox chapter makes (by their path in the state dir)
PKI_FILES = {
    "certificate": lambda p: "/" not in p and p.endswith((".crt", ".key", ".pub")),
    "kubeconfig": lambda p: p.startswith("kubeconfigs/"),
    "secret-mode": lambda p: p == "encryption-config.yaml",
}


def list_text(rows: Sequence[progress.ChapterState]) -> str:
    table = format_table(("NN", "CHAPTER", "STATE", "DO IT WITH", "DETAIL"),
                         [(f"{r.number:02d}", r.slug, r.state.upper(), r.task, r.detail) for r in rows])
    nxt = progress.first_not_done(rows)
    tail = (f"next: {nxt.number:02d} {nxt.slug}: `invoke chapter {nxt.number}` shows it, "
            f"`invoke chapter --next` runs it") if nxt else "every chapter is done"
    return f"{table}\n{tail}"


def list_json(rows: Sequence[progress.ChapterState]) -> str:
    nxt = progress.first_not_done(rows)
    return json.dumps({"chapters": [r.to_json() for r in rows], "next": nxt.number if nxt else None}, indent=2)


def _header(t: TutorialChapter, state: progress.ChapterState | None) -> list[str]:
    c = t.chapter()
    by = f"hardway: `{t.command}`" + (f" (chapter {c.name})" if c is not None else "")
    lines = [f"{t.label} {t.title}", "", t.summary, "", by, f"read: {t.doc}"]
    if state is not None:
        lines.append(f"state: {state.state} ({state.detail})")
    return lines


def page(ctx: Context, t: TutorialChapter, state: progress.ChapterState | None,
         sections: Sequence[str] = SECTIONS) -> dict[str, object]:
    """One chapter's page as data (JSON's shape; ``page_text`` prints it)."""
    out: dict[str, object] = {"number": t.number, "slug": t.slug, "title": t.title, "summary": t.summary,
                              "task": t.task, "doc": t.doc, "state": state.to_json() if state else None}
    chapter = t.chapter()
    out["on_nodes"] = chapter is not None and bool(chapter.targets(ctx.inv))
    if t.kind == tutorial.PKI_PART:  # made on the jumpbox: where each of its files lands
        wanted = PKI_FILES[t.part]
        out["deliveries"] = [asdict(d) for d in view.deliveries(ctx, [c for c in REGISTRY if c.targets(ctx.inv)])
                             if wanted(d.jumpbox)]
    if chapter is None or not out["on_nodes"]:
        out["files"], out["units"], out["commands"], out["changes"] = [], {}, [], None
        return out
    changes = view.changes(ctx, chapter) if "changes" in sections else None
    planned = changes.planned if changes is not None else None  # asked the nodes: what the apply would install
    if "files" in sections:
        out["files"] = [asdict(r) for r in view.file_rows(ctx, chapter, planned)]
        out["units"] = view.unit_texts(ctx, chapter, planned)
    if "commands" in sections:
        out["commands"] = [{"where": s.where, "title": s.title, "commands": s.commands}
                           for s in view.manual_sections(ctx, chapter, planned,
                                                         changes.steps if changes is not None else None)]
    out["changes"] = changes.to_json() if changes is not None else None
    return out


def page_text(t: TutorialChapter, data: dict[str, object], state: progress.ChapterState | None) -> str:
    lines = _header(t, state)
    files = data.get("files") or []
    if state is not None and state.results:
        lines += ["", "checks:"]
        lines += [f"  {r.status.upper():5} {r.check} {r.node}: {r.detail}" for r in state.results]
    if data.get("deliveries"):
        lines += ["", "== made on the jumpbox; the node chapters push each file where it is used =="]
        lines.append(format_table(("JUMPBOX FILE", "NODE", "PATH", "MODE", "PUSHED BY"),
                                  [(d["jumpbox"], d["node"], d["path"], d["mode"], d["chapter"])
                                   for d in data["deliveries"]]))  # type: ignore[union-attr]
    if not data.get("on_nodes"):
        lines += ["", f"This chapter installs nothing on the nodes itself; {t.doc} says how to check it by hand."]
        return "\n".join(lines)
    if files:
        lines += ["", "== files, per node (the plan the apply pushes) =="]
        lines.append(format_table(("NODE", "PATH", "MODE", "OWNER", "SIZE", "KIND", "SHA256"),
                                  [(f["node"], f["path"], f["mode"], f["owner"], str(f["size"]), f["kind"],
                                    f["sha256"][:16]) for f in files]))  # type: ignore[index]
        for path, per_node in (data.get("units") or {}).items():  # type: ignore[union-attr]
            texts = list(per_node.items())
            first, text = texts[0]
            lines += ["", f"--- {path} on {first} ---", text.rstrip("\n")]
            for node, other in texts[1:]:  # the others as their difference from the first: what is per node
                delta = [d for d in difflib.unified_diff(text.splitlines(), other.splitlines(), lineterm="", n=0)
                         if d[:1] in "+-" and not d.startswith(("+++", "---"))]
                lines.append(f"--- on {node}: " + ("the same" if not delta else f"differs from {first} in:"))
                lines += [f"    {d}" for d in delta]
    if data.get("commands"):
        lines += ["", "== by hand: the same, typed (generated from the same plan) ==",
                  "Copy-paste each block where it says; node blocks run as root (`sudo -i` first if you log in as "
                  "another user)."]
        for s in data["commands"]:  # type: ignore[union-attr]
            lines += ["", f"# {s['title']}", *s["commands"]]
    ch = data.get("changes")
    if ch is not None:
        rows = ch["changes"]  # type: ignore[index]
        lines += ["", "== what it would change now =="]
        if not rows:
            lines.append("nothing: every node holds the planned files and runs the chapter's services")
        else:
            lines.append(format_table(("NODE", "CHANGE", "WHAT", "DETAIL"),
                                      [(r["node"], r["what"], r["path"], r["detail"]) for r in rows]))
        for d in ch["diffs"]:  # type: ignore[index]
            lines += ["", d["diff"].rstrip("\n")]
    return "\n".join(lines)
