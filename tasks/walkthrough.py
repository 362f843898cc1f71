"""`invoke chapter`: the tutorial's chapters one at a time (hardway/walkthrough)."""

from __future__ import annotations

import contextlib
import json as jsonlib
import sys
from pathlib import Path

from invoke import Exit, Task, task
from invoke.parser import Argument

from hardway.errors import HardwayError

from .common import (
    CACHE_DIR,
    INVENTORY_HELP,
    PKI_DIR_HELP,
    ROOT,
    connected,
    help_asked,
    inventory_path,
    load_inventory,
    pki_state,
    user_errors,
)

HELP = {
    "which": "a chapter: its number (7) or name (etcd); see --list",
    "list": "the tutorial's 13 chapters, each with its state on this cluster (from its checks)",
    "next": "apply the first chapter not yet done, then run its checks",
    "apply": "do the chapter (its task), then run its checks",
    "only": "print only these parts of the page, comma-separated: files, commands, changes (default: all)",
    "json": "print as JSON (for grading a lab)",
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "timeout": "with --apply: seconds to wait for services to become healthy (default 90)",
    "adopt": "with --apply: replace files hardway did not deploy, keeping each as <path>.hardway-orig-<time>",
    "fix": "chapters that repair what preflight finds (workers): show and, with --apply, do the repairs too",
}


class _Which(Argument):
    """The chapter argument: positional, yet not wanted with --list or --next (invoke's parser takes every
    positional argument as required: this one counts as given when either flag is)."""

    others: tuple[Argument, ...] = ()

    def _get(self):  # -> the chapter, "" with --list/--next, else None (missing)
        value = Argument.value.fget(self)
        return "" if value is None and any(a.value for a in self.others) else value

    value = property(_get, Argument.value.fset)


class _ChapterTask(Task):
    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        which = next(a for a in args if a.name == "which")
        which.__class__ = _Which
        which.others = tuple(a for a in args if a.name in ("list", "next"))
        return args


@task(klass=_ChapterTask, name="chapter", positional=["which"], auto_shortflags=False, help=HELP)
@user_errors
def chapter(c, which=None, list=False, next=False, apply=False, only=None, json=False, inventory=None, pki_dir=None,
            timeout=None, adopt=False, fix=False) -> None:
    """Walk the tutorial: `--list`, `chapter N` (what, files, by hand, changes), `--apply`, `--next`."""
    from hardway import remote, walkthrough
    from hardway.walkthrough import report

    help_asked(which, "chapter", chapter, HELP)
    if sum(map(bool, (which, list, next))) != 1:
        raise HardwayError("give one of: a chapter (`invoke chapter 7`), --list, or --next")
    sections = report.SECTIONS if only is None else tuple(s.strip() for s in only.split(","))
    if bad := [s for s in sections if s not in report.SECTIONS]:
        raise HardwayError(f"--only: {', '.join(bad)} is not one of {', '.join(report.SECTIONS)}")
    inv = load_inventory(inventory)
    with connected(inv, pki_state(inv, pki_dir)) as ctx:
        ctx.progress = remote.QUIET  # looking changes nothing: no progress lines (stdout may be JSON)
        ctx.fix = fix
        if list:
            rows = walkthrough.states(ctx)
            print(report.list_json(rows) if json else report.list_text(rows))
            return
        if next:
            nxt = walkthrough.first_not_done(walkthrough.states(ctx))
            if nxt is None:
                print(jsonlib.dumps({"next": None}) if json else "every chapter is done")
                return
            t = walkthrough.find(str(nxt.number))
            print(f"next: {t.label} {t.title}", file=sys.stderr)
        else:
            t = walkthrough.find(str(which))
        if not (apply or next):
            # the state asks the nodes: only with the changes, which ask them anyway
            state = walkthrough.states(ctx, [t])[0] if "changes" in sections else None
            data = report.page(ctx, t, state, sections)
            print(jsonlib.dumps(data, indent=2) if json else report.page_text(t, data, state))
            return
    failed = None
    with contextlib.redirect_stdout(sys.stderr) if json else contextlib.nullcontext():  # stdout: the JSON only
        try:
            _apply(c, t, inventory, pki_dir, timeout, adopt, fix)
        except Exit as exc:  # the task said why (its hints, one error line); with --json, still grade the chapter
            if not json:
                raise
            failed = exc
            if exc.message:
                print(exc.message, file=sys.stderr)
    inv = load_inventory(inventory)  # again: the apply may have written it (`lab.up` writes inventory/lab.yaml)
    with connected(inv, pki_state(inv, pki_dir)) as ctx:
        ctx.progress = remote.QUIET
        state = walkthrough.states(ctx, [t])[0]
    print(jsonlib.dumps(state.to_json(), indent=2) if json else
          f"{t.label} {t.slug}: {state.state} ({state.detail})")
    if failed is not None or state.state == walkthrough.FAILING:
        raise Exit(None if json else f"chapter {t.number}: some checks fail (see above)", code=1)


def _apply(c, t, inventory, pki_dir, timeout, adopt, fix) -> None:
    """Run what does tutorial chapter ``t``: the same task a user would type."""
    from hardway import binaries, lab
    from hardway.walkthrough import tutorial

    from . import chapters, kubeconfig, pki
    from . import lab as lab_tasks

    if t.kind in (tutorial.NODES, tutorial.CLUSTER):
        chapter = t.chapter()
        more = {"fix": fix} if chapter.fixable else {}
        if fix and not chapter.fixable:
            raise HardwayError(f"--fix: chapter {t.number} ({t.slug}) repairs nothing; it is for the workers (9)")
        chapters.apply_task(chapter).body(c, inventory=inventory, pki_dir=pki_dir, timeout=timeout, adopt=adopt,
                                          **more)
    elif t.kind == tutorial.PKI_PART:
        pki.pki_generate.body(c, inventory=inventory, pki_dir=pki_dir)
    elif t.kind == tutorial.ADMIN:
        kubeconfig.kubeconfig_admin.body(c, inventory=inventory, pki_dir=pki_dir)
    elif t.kind == tutorial.BINARIES:
        inv = load_inventory(inventory)
        for path in binaries.fetch_all(inv, sorted(inv.binaries), CACHE_DIR):
            print(path)
    elif t.kind == tutorial.MACHINES:
        if Path(inventory_path(inventory)).resolve() != (ROOT / "inventory" / "lab.yaml").resolve():
            raise HardwayError("compute resources: these are your own machines (inventory "
                               f"{inventory_path(inventory)}); start them and record their host keys")
        lab_tasks.lab_up.body(c, name=lab.DEFAULT_NAME)
    elif t.kind == tutorial.TOOLS:
        raise HardwayError("prerequisites: install the jumpbox's tools with `bash scripts/setup.sh` (as root), "
                           "then `invoke chapter --list`")
    else:  # cleanup is never done for you: it removes the cluster
        raise HardwayError("cleanup removes the cluster, so `invoke chapter` leaves it to you: `invoke lab.down` "
                           "(the local lab) or `invoke reset NODE --yes` (your own machines)")
