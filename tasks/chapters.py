"""One apply task per chapter, generated from the registry, and `invoke verify`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Collection, Exit, Task, task

from hardway.errors import HardwayError

if TYPE_CHECKING:
    from hardway.chapters.base import Chapter

from .common import CACHE_DIR, INVENTORY_HELP, PKI_DIR_HELP, connected, load_inventory, pki_state, seconds, user_errors


def apply_task(chapter: Chapter) -> Task:
    """The task that applies ``chapter`` (`invoke <chapter.task>`): preflight, push, start, wait, checks."""

    def apply(c, inventory=None, pki_dir=None, timeout=None, adopt=False, fix=False) -> None:
        from hardway import binaries, checks

        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        for name in chapter.binaries:
            if name in inv.binaries:
                binaries.fetch(inv.binaries[name], CACHE_DIR)
        with connected(inv, pki_state(inv, pki_dir), timeout=wait, adopt=adopt) as ctx:
            ctx.fix = fix
            report = chapter.apply(ctx)
        print(checks.format_table(report.results))
        print(f"{report.summary()} ({report.seconds:.1f}s)")
        if checks.failed(report.results):
            raise Exit(f"{chapter.task}: applied, but some checks failed (see hints above)", code=1)

    apply.__doc__ = f"{chapter.title}: preflight, push, start and verify (re-running it changes nothing)."
    helps = {
        "inventory": INVENTORY_HELP,
        "pki-dir": PKI_DIR_HELP,
        "timeout": "seconds to wait for every service to become healthy (default 90)",
        "adopt": "replace files at planned paths that hardway did not deploy, keeping each as "
                 "<path>.hardway-orig-<time> (default: stop and name them)",
    }
    if chapter.fixable:
        helps["fix"] = ("repair what preflight finds fixable and persist it (swap off with /etc/fstab's swap lines "
                        "commented out, br_netfilter, sysctls), saying what it changed (default: stop and name it)")
        body = apply
    else:
        def body(c, inventory=None, pki_dir=None, timeout=None, adopt=False) -> None:
            return apply(c, inventory, pki_dir, timeout, adopt)

        body.__doc__ = apply.__doc__
    return task(name=chapter.task, auto_shortflags=False, help=helps)(user_errors(body))


def _verify_choices() -> str:
    from hardway.chapters import verifiable

    return ", ".join(ch.name for ch in verifiable())


@task(auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "chapter": f"one chapter to verify: {_verify_choices()} (default: all)",
    "json": "print the results as JSON",
})
@user_errors
def verify(c, inventory=None, pki_dir=None, chapter=None, json=False) -> None:
    """Run the chapters' checks; exit 0 only if none failed."""
    from hardway import checks
    from hardway.chapters import verifiable

    chosen = [ch for ch in verifiable() if chapter in (None, ch.name)]
    if not chosen:
        raise HardwayError(f"--chapter: {chapter!r} is not one of: {_verify_choices()}")
    inv = load_inventory(inventory)
    with connected(inv, pki_state(inv, pki_dir)) as ctx:
        results = checks.run_checks([check for ch in chosen for check in ch.checks(ctx)])
    print(checks.to_json(results) if json else checks.format_table(results))
    if checks.failed(results):
        raise Exit(None if json else "verify: some checks failed (see the hints above)", code=1)


def add_apply_tasks(ns: Collection) -> None:
    """`invoke <task>` for every chapter applied by a task of its own (bootstrap-etcd, ...)."""
    from hardway.chapters import REGISTRY

    for chapter in REGISTRY:
        if chapter.applied_by_task:
            ns.add_task(apply_task(chapter))
