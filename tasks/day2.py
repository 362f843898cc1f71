"""Day 2: etcd.replace, etcd.snapshot, etcd.restore, reset and diagnose."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from .common import (
    INVENTORY_HELP,
    PKI_DIR_HELP,
    connected,
    help_asked,
    load_inventory,
    pki_state,
    seconds,
    user_errors,
    whole_number,
)

DAY2_HELP = {
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "dry-run": "print the steps and the commands they run, and change nothing",
    "timeout": "seconds to wait for each member to become healthy (default 90)",
}


def add_to(ns: Collection) -> None:
    """Add the day-2 tasks to ``ns`` (built in a function: they share the help texts above)."""
    from hardway.day2 import replace

    replace_help = {"node": "the controller whose member is re-added (NODE, or --node NODE)", **DAY2_HELP}

    @task(name="replace", auto_shortflags=False, help=replace_help)
    @user_errors
    def etcd_replace(c, node, inventory=None, pki_dir=None, dry_run=False, timeout=None) -> None:
        """Re-add NODE's etcd member on an empty data dir (stale, removed or lost data); quorum is kept."""

        help_asked(node, "etcd.replace NODE", etcd_replace, replace_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        with connected(inv, pki_state(inv, pki_dir), timeout=wait) as ctx:
            done = replace.replace(ctx, node, dry_run=dry_run)
        print(done.procedure.describe() + "\ndry run: nothing was changed" if dry_run else done.summary())

    snapshot_help = {**DAY2_HELP, "out": "directory for the snapshot (default: backups/<cluster> beside the PKI "
                                         "state dir)",
                     "schedule": "instead: install a systemd timer on every controller taking a local snapshot "
                                 "(an OnCalendar= value such as daily or '*-*-* 03:00'); 'off' removes it"}
    snapshot_help.pop("timeout")

    @task(name="snapshot", auto_shortflags=False, help=snapshot_help)
    @user_errors
    def etcd_snapshot(c, inventory=None, pki_dir=None, dry_run=False, out=None, schedule=None) -> None:
        """Save a snapshot from a healthy member to the jumpbox (0600), with its sha256 and status beside it."""
        from hardway.day2 import schedule as schedule_lib
        from hardway.day2 import snapshot

        inv = load_inventory(inventory)
        with connected(inv, pki_state(inv, pki_dir)) as ctx:
            if schedule is not None:
                proc = schedule_lib.schedule(ctx, schedule, dry_run=dry_run)
                print(proc.describe() + ("\ndry run: nothing was changed" if dry_run else ""))
                return
            proc, snap = snapshot.snapshot(ctx, Path(out) if out else None, dry_run=dry_run)
        print(proc.describe() + "\ndry run: nothing was changed" if dry_run else snap.summary())

    restore_help = {"snapshot": "the snapshot file (its .sha256 must be beside it)", **DAY2_HELP}

    @task(name="restore", auto_shortflags=False, help=restore_help)
    @user_errors
    def etcd_restore(c, snapshot, inventory=None, pki_dir=None, dry_run=False, timeout=None) -> None:
        """Restore every member from SNAPSHOT as a new cluster (new token); the old data dirs are moved aside."""
        from hardway.day2 import restore

        help_asked(snapshot, "etcd.restore SNAPSHOT", etcd_restore, restore_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        with connected(inv, pki_state(inv, pki_dir), timeout=wait) as ctx:
            proc, snap, took = restore.restore(ctx, Path(snapshot), dry_run=dry_run)
        if dry_run:
            print(proc.describe() + "\ndry run: nothing was changed")
        else:
            print(f"etcd.restore: every member restored from {snap.path.name} and serving ({took:.1f}s)")

    members = Collection(replace.ETCD.name)
    members.add_task(etcd_replace)
    members.add_task(etcd_snapshot)
    members.add_task(etcd_restore)
    ns.add_collection(members)

    reset_help = {"node": "the node(s) to reset: NODE or NODE,NODE (or --node ...)",
                  "yes": "required: reset removes what hardway deployed there",
                  "all": "allow resetting every controller at once (the etcd cluster goes with them)",
                  "inventory": INVENTORY_HELP, "pki-dir": DAY2_HELP["pki-dir"], "dry-run": DAY2_HELP["dry-run"],
                  "timeout": DAY2_HELP["timeout"]}

    @task(name="reset", auto_shortflags=False, help=reset_help)
    @user_errors
    def reset_task(c, node, yes=False, all=False, inventory=None, pki_dir=None, dry_run=False, timeout=None) -> None:
        """Undo what hardway deployed on NODE (from its deployment record); data dirs are moved aside."""
        from hardway.day2 import reset

        help_asked(node, "reset NODE", reset_task, reset_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        names = [n.strip() for n in str(node).split(",") if n.strip()]
        with connected(inv, pki_state(inv, pki_dir), timeout=wait) as ctx:
            proc, took = reset.reset(ctx, names, yes=yes, all_controllers=all, dry_run=dry_run)
        print(proc.describe() + "\ndry run: nothing was changed" if dry_run else
              f"reset {', '.join(names)}: done in {took:.1f}s")

    ns.add_task(reset_task)

    @task(name="diagnose", auto_shortflags=False, help={
        "inventory": INVENTORY_HELP, "pki-dir": DAY2_HELP["pki-dir"],
        "lines": "journal lines per unit (default 200)",
        "out": "directory for the bundle (default: diagnose/<cluster> beside the PKI state dir)",
        "dry-run": "print what would be collected from each node, and collect nothing"})
    @user_errors
    def diagnose_task(c, inventory=None, pki_dir=None, lines=None, out=None, dry_run=False) -> None:
        """Collect evidence from every node into one tarball, and print which known failures matched where."""
        from hardway.day2 import diagnose

        count = 200 if (n := whole_number(lines, "--lines")) is None else n
        inv = load_inventory(inventory)
        with connected(inv, pki_state(inv, pki_dir)) as ctx:
            if dry_run:
                print(diagnose.describe(ctx, count, Path(out) if out else None) + "\ndry run: nothing was collected")
                return
            bundle = diagnose.diagnose(ctx, lines=count, out=Path(out) if out else None)
        print(bundle.summary_text(), end="")

    ns.add_task(diagnose_task)

