"""`invoke rotate-certs`: reissue what an inventory change affects, push it, restart rolling."""

from __future__ import annotations

from invoke import Exit, task

from .common import (
    CACHE_DIR,
    INVENTORY_HELP,
    PKI_DIR_HELP,
    connected,
    days,
    load_inventory,
    pki_state,
    seconds,
    user_errors,
)


@task(name="rotate-certs", auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "dry-run": "print the plan (what is reissued and why, which files go where, restart order) and change nothing",
    "expiring-within": "also renew certificates that expire within this window, e.g. 30d "
                       "(default: the inventory's pki.renew_within_days)",
    "timeout": "seconds to wait for each restarted service (default 90)",
})
@user_errors
def rotate_certs(c, inventory=None, pki_dir=None, dry_run=False, expiring_within=None, timeout=None) -> None:
    """After an address or SAN change in the inventory: reissue exactly what it affects, push, restart rolling."""
    from datetime import timedelta

    from hardway import checks, rotate
    from hardway.chapters import owner_of, verifiable

    wait = seconds(timeout, "--timeout", 90.0)
    inv = load_inventory(inventory)
    state = pki_state(inv, pki_dir)
    window = timedelta(days=days(expiring_within, "--expiring-within")) if expiring_within else None
    if dry_run:
        print(rotate.plan_rotation(inv, state, renew_within=window, cache_dir=CACHE_DIR).format())
        print("dry run: nothing was changed")
        return
    report = rotate.rotate(inv, state, renew_within=window, cache_dir=CACHE_DIR, timeout=wait)
    print(report.plan.format())
    # the jumpbox's own chapter (certificates), and every chapter whose files or services were touched
    touched = {f.chapter for n in report.plan.nodes for f in n.files} | {owner_of(s).name for s, _ in report.restarted}
    with connected(inv, state) as ctx:
        chosen = [ch for ch in verifiable() if ch.name in touched or not ch.targets(inv)]
        results = checks.run_checks([check for ch in chosen for check in ch.checks(ctx)])
    print(checks.format_table(results))
    if checks.failed(results):
        raise Exit("rotate-certs: rotated, but some checks failed (see hints above)", code=1)
