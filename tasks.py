"""hardway's command line: thin invoke tasks over the ``hardway`` library.

Each task parses its flags, loads the inventory, calls one library function and prints its
report. User errors (``HardwayError``) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

from hardway.errors import HardwayError

ROOT = Path(__file__).resolve().parent
CACHE_DIR = ROOT / "build" / "cache"  # fetched binaries, keyed by sha256
INVENTORY_HELP = "inventory file (default: $HARDWAY_INVENTORY, else inventory/lab.yaml)"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a HardwayError into one line and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HardwayError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except OSError as exc:  # e.g. --pki-dir under a file, an unreadable key: one line, not a traceback
            where = f": {exc.filename}" if exc.filename else ""
            raise Exit(f"error: {exc.strerror or exc}{where}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def inventory_path(path: str | None) -> Path:
    return Path(path or os.environ.get("HARDWAY_INVENTORY") or ROOT / "inventory" / "lab.yaml")


def load_inventory(path: str | None):  # -> hardway.inventory.Inventory
    from hardway import inventory

    inv = inventory.load(inventory_path(path))
    for warning in inv.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inv


MAX_SECONDS = 86400.0  # a day: every wait hardway does is far shorter
MAX_DAYS = 36500  # what pki.ca_validity_days allows; a larger timedelta overflows


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() then refuses with a traceback."""
    return text.isascii() and text.isdigit()


def seconds(value, flag: str, default: float) -> float:
    """A positive number of seconds from a flag (invoke's own int parsing would raise a traceback)."""
    if value is None:
        return default
    try:
        parsed = float(value)
    except ValueError:
        parsed = -1.0
    if not 0 < parsed <= MAX_SECONDS:  # also refuses nan and inf, which float() accepts
        raise HardwayError(f"{flag}: {value!r} is not a positive number of seconds (at most {MAX_SECONDS:.0f})")
    return parsed


def whole_number(value, flag: str) -> int | None:
    """A count from a flag, None when not given."""
    if value is not None and not _digits(str(value)):
        raise HardwayError(f"{flag}: {value!r} is not a whole number")
    return None if value is None else int(value)


def pki_state(inv, pki_dir: str | None):  # -> hardway.state.PkiState
    from hardway.state import PkiState

    return PkiState(Path(pki_dir) if pki_dir else ROOT / "pki" / inv.cluster_name)


ns = Collection()


# --- pki: certificates, kubeconfigs, encryption config (owner: PKI) -------------------------

PKI_HELP = {
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "renew-within-days": "reissue certificates expiring within N days (default: the inventory's "
                         "pki.renew_within_days)",
}


def _renew_within(inv, days: str | None):  # -> datetime.timedelta
    from datetime import timedelta

    if days is None:
        return timedelta(days=inv.renew_within_days)
    if not _digits(str(days)) or int(days) > MAX_DAYS:
        raise HardwayError(f"--renew-within-days: {days!r} is not a whole number of days from 0 to {MAX_DAYS}")
    return timedelta(days=int(days))


@task(auto_shortflags=False, help={
    **PKI_HELP,
    "rotate-ca": "replace the CA itself; every certificate is then reissued and must be redistributed "
                 "to every node",
})
@user_errors
def pki_generate(c, inventory=None, pki_dir=None, rotate_ca=False, renew_within_days=None):
    """Issue/keep certificates, then write kubeconfigs and the encryption config (idempotent)."""
    from hardway import jumpbox
    from hardway import pki as pki_lib

    inv = load_inventory(inventory)
    state = pki_state(inv, pki_dir)
    if rotate_ca:
        print("warning: --rotate-ca issues a new CA: every certificate and kubeconfig is reissued and must "
              "be redistributed to every node (the old ones stop being trusted)", file=sys.stderr)
    outcomes = jumpbox.generate(inv, state, rotate_ca=rotate_ca, renew_within=_renew_within(inv, renew_within_days))
    print(pki_lib.format_outcomes(outcomes))
    print(f"PKI state: {state.root}")


@task(auto_shortflags=False, help=PKI_HELP)
@user_errors
def pki_check(c, inventory=None, pki_dir=None, renew_within_days=None):
    """Table of every certificate's expiry and drift; exit 1 if any is missing, drifted or expiring."""
    from hardway import pki as pki_lib

    inv = load_inventory(inventory)
    statuses = pki_lib.check(inv, pki_state(inv, pki_dir), renew_within=_renew_within(inv, renew_within_days))
    print(pki_lib.format_check_table(statuses))
    if pki_lib.has_problems(statuses):
        raise Exit("pki.check: some certificates are missing, drifted or expiring; run invoke pki", code=1)


pki = Collection("pki")
pki.add_task(pki_generate, name="generate", default=True)
pki.add_task(pki_check, name="check")
ns.add_collection(pki)

# --- render: units and configs per node (owner: render) ------------------------------------


@task(name="render", auto_shortflags=False, help={
    "node": "render only this node (default: every node)",
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "out": "output directory (default: build/<cluster name>)",
})
@user_errors
def render_build(c, node=None, inventory=None, pki_dir=None, out=None):
    """Write every file each node receives to build/<cluster>/<node>/ plus manifest.json; lint the units."""
    from hardway import build

    inv = load_inventory(inventory)
    out_dir = Path(out) if out else ROOT / "build" / inv.cluster_name
    written = build.write_build(inv, pki_state(inv, pki_dir), out_dir, node, cache_dir=CACHE_DIR)
    for name in [node] if node else [n.name for n in inv.nodes]:
        node_dir = out_dir / name
        files = [p for p in written if node_dir in p.parents and p.name != "manifest.json"]
        size = sum(p.stat().st_size for p in files)
        print(f"{name}: {len(files)} files, {size} bytes, manifest {node_dir / 'manifest.json'}")
    units = [p for p in written if p.suffix == ".service" and p.parent.match("etc/systemd/system")]
    print(f"{len(units)} units pass systemd-analyze verify")


ns.add_task(render_build)

# --- lab: the local lab of systemd machines (owner: lab) -----------------------------------

LAB_NAME_HELP = "lab name (default: lab; the default lab's inventory is inventory/lab.yaml)"


@task(name="up", auto_shortflags=False, help={
    "nodes": "number of controllers (default 3, or the running lab's)",
    "workers": "number of workers (default 2, or the running lab's)",
    "name": LAB_NAME_HELP,
    "subnet": "the lab's IPv4 subnet (default 10.77.0.0/24; another lab needs another one)",
    "timeout": "seconds to wait for every node to be SSH-ready (default: 60 + 10 per node)",
    "loadbalancers": "load-balancer nodes, 0 or 1 (default 1, or the running lab's): lb-0 runs HAProxy in "
                     "front of the apiservers",
})
@user_errors
def lab_up(c, nodes=None, workers=None, name="lab", subnet=None, timeout=None, loadbalancers=None):
    """Boot the local lab (systemd-nspawn machines in network namespaces); no-op if it runs."""
    from hardway import lab

    copy = ROOT / "inventory" / "lab.yaml" if name == lab.DEFAULT_NAME else None
    lab.up(name, whole_number(nodes, "--nodes"), whole_number(workers, "--workers"), subnet, inventory_copy=copy,
           loadbalancers=whole_number(loadbalancers, "--loadbalancers"),
           timeout=None if timeout is None else seconds(timeout, "--timeout", 0.0))


@task(name="down", auto_shortflags=False, help={"name": LAB_NAME_HELP})
@user_errors
def lab_down(c, name="lab"):
    """Remove the lab: machines, mounts, network namespaces, links and state (also a crashed run's)."""
    from hardway import lab

    lab.down(name)


@task(name="status", auto_shortflags=False, help={"name": LAB_NAME_HELP})
@user_errors
def lab_status(c, name="lab"):
    """Table of the lab's nodes: address, roles, machine, systemd state, SSH; exit 1 if any is not ok."""
    from hardway import lab

    rows = lab.status(name)
    print(lab.format_status(rows))
    if not all(r.ok for r in rows):
        raise Exit(f"lab.status: some nodes of lab {name} are not running or not reachable", code=1)


lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
lab_ns.add_task(lab_status, name="status")
ns.add_collection(lab_ns)

# --- applying chapters, and verify ------------------------------------------------------------


def context(inv, state, *, connector, timeout: float = 90.0, adopt: bool = False):  # -> Context
    from hardway.chapters import Context

    return Context(inv, state, cache_dir=CACHE_DIR, connector=connector, timeout=timeout, adopt=adopt)


def apply_task(chapter):  # -> invoke Task
    """The task that applies ``chapter`` (`invoke <chapter.task>`): preflight, push, start, wait, checks."""

    def apply(c, inventory=None, pki_dir=None, timeout=None, adopt=False, fix=False):
        from hardway import binaries, checks, remote

        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        for name in chapter.binaries:
            if name in inv.binaries:
                binaries.fetch(inv.binaries[name], CACHE_DIR)
        with remote.Pool() as pool:
            ctx = context(inv, pki_state(inv, pki_dir), connector=pool, timeout=wait, adopt=adopt)
            ctx.fix = fix
            report = chapter.apply(ctx)
        print(checks.format_table(report.results))
        print(f"{report.summary()} ({report.seconds:.1f}s)")
        if checks.failed(report.results):
            raise Exit(f"{chapter.task}: applied, but some checks failed (see hints above)", code=1)

    apply.__doc__ = f"{chapter.title}: preflight, push, start and verify (re-running it changes nothing)."
    helps = {
        "inventory": INVENTORY_HELP,
        "pki-dir": "PKI state directory (default: pki/<cluster name>)",
        "timeout": "seconds to wait for every service to become healthy (default 90)",
        "adopt": "replace files at planned paths that hardway did not deploy, keeping each as "
                 "<path>.hardway-orig-<time> (default: stop and name them)",
    }
    if chapter.fixable:
        helps["fix"] = ("repair what preflight finds fixable and persist it (swap off with /etc/fstab's swap lines "
                        "commented out, br_netfilter, sysctls), saying what it changed (default: stop and name it)")
        body = apply
    else:
        def body(c, inventory=None, pki_dir=None, timeout=None, adopt=False):
            return apply(c, inventory, pki_dir, timeout, adopt)

        body.__doc__ = apply.__doc__
    return task(name=chapter.task, auto_shortflags=False, help=helps)(user_errors(body))


def _verify_choices() -> str:
    from hardway.chapters import verifiable

    return ", ".join(ch.name for ch in verifiable())


@task(auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "chapter": f"one chapter to verify: {_verify_choices()} (default: all)",
    "json": "print the results as JSON",
})
@user_errors
def verify(c, inventory=None, pki_dir=None, chapter=None, json=False):
    """Run the chapters' checks; exit 0 only if none failed."""
    from hardway import checks, remote
    from hardway.chapters import verifiable

    chosen = [ch for ch in verifiable() if chapter in (None, ch.name)]
    if not chosen:
        raise HardwayError(f"--chapter: {chapter!r} is not one of: {_verify_choices()}")
    inv = load_inventory(inventory)
    with remote.Pool() as pool:
        ctx = context(inv, pki_state(inv, pki_dir), connector=pool)
        results = checks.run_checks([check for ch in chosen for check in ch.checks(ctx)])
    print(checks.to_json(results) if json else checks.format_table(results))
    if checks.failed(results):
        raise Exit(None if json else "verify: some checks failed (see the hints above)", code=1)


ns.add_task(verify)

# --- kubeconfig.admin: remote kubectl through the API endpoint (the tutorial's chapter 10) --------


@task(name="admin", auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "out": "where to write it (default: ~/.kube/config)",
    "force": "replace a different file there, keeping it as <out>.hardway-orig-<time>",
})
@user_errors
def kubeconfig_admin(c, inventory=None, pki_dir=None, out=None, force=False):
    """Write the admin kubeconfig (through the API endpoint, 0600) for kubectl on this machine."""
    from hardway import kubeconfig

    inv = load_inventory(inventory)
    target = Path(out).expanduser() if out else Path.home() / ".kube" / "config"
    written = kubeconfig.install_admin(inv, pki_state(inv, pki_dir), target, force=force)
    print(written)
    print(f"try: kubectl --kubeconfig {target} get --raw /readyz")


kubeconfig_ns = Collection("kubeconfig")
kubeconfig_ns.add_task(kubeconfig_admin, name="admin")
ns.add_collection(kubeconfig_ns)

# --- rotate-certs (owner: rotation) --------------------------------------------------------


def _days(value, flag: str) -> int:
    text = str(value).strip().lower().removesuffix("d")
    if not _digits(text) or int(text) > MAX_DAYS:
        raise HardwayError(f"{flag}: {value!r} is not a number of days such as 30d (at most {MAX_DAYS})")
    return int(text)


@task(name="rotate-certs", auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "dry-run": "print the plan (what is reissued and why, which files go where, restart order) and change nothing",
    "expiring-within": "also renew certificates that expire within this window, e.g. 30d "
                       "(default: the inventory's pki.renew_within_days)",
    "timeout": "seconds to wait for each restarted service (default 90)",
})
@user_errors
def rotate_certs(c, inventory=None, pki_dir=None, dry_run=False, expiring_within=None, timeout=None):
    """After an address or SAN change in the inventory: reissue exactly what it affects, push, restart rolling."""
    from datetime import timedelta

    from hardway import checks, remote, rotate
    from hardway.chapters import owner_of, verifiable

    wait = seconds(timeout, "--timeout", 90.0)
    inv = load_inventory(inventory)
    state = pki_state(inv, pki_dir)
    window = timedelta(days=_days(expiring_within, "--expiring-within")) if expiring_within else None
    if dry_run:
        print(rotate.plan_rotation(inv, state, renew_within=window, cache_dir=CACHE_DIR).format())
        print("dry run: nothing was changed")
        return
    report = rotate.rotate(inv, state, renew_within=window, cache_dir=CACHE_DIR, timeout=wait)
    print(report.plan.format())
    # the jumpbox's own chapter (certificates), and every chapter whose files or services were touched
    touched = {f.chapter for n in report.plan.nodes for f in n.files} | {owner_of(s).name for s, _ in report.restarted}
    with remote.Pool() as pool:
        ctx = context(inv, state, connector=pool)
        chosen = [ch for ch in verifiable() if ch.name in touched or not ch.targets(inv)]
        results = checks.run_checks([check for ch in chosen for check in ch.checks(ctx)])
    print(checks.format_table(results))
    if checks.failed(results):
        raise Exit("rotate-certs: rotated, but some checks failed (see hints above)", code=1)


ns.add_task(rotate_certs)


def _add_apply_tasks() -> None:
    from hardway.chapters import REGISTRY

    for chapter in REGISTRY:
        if chapter.applied_by_task:
            ns.add_task(apply_task(chapter))


_add_apply_tasks()

# --- day 2: etcd.replace, etcd.snapshot, etcd.restore, reset, diagnose (owner: day2) ---------

DAY2_HELP = {
    "inventory": INVENTORY_HELP,
    "pki-dir": "PKI state directory (default: pki/<cluster name>)",
    "dry-run": "print the steps and the commands they run, and change nothing",
    "timeout": "seconds to wait for each member to become healthy (default 90)",
}


def _help_asked(value, name: str, fn, helps: dict[str, str]) -> None:
    """invoke hands ``--help`` to a task's missing positional argument instead of printing help: do it here."""
    if value not in ("-h", "--help"):
        return
    doc = (fn.__doc__ or "").strip()
    lines = [f"Usage: invoke [--core-opts] {name} [--options] [other tasks here ...]", "", f"Docstring:\n  {doc}", "",
             "Options:"]
    lines += [f"  --{flag:<16} {text}" for flag, text in helps.items()]
    raise Exit("\n".join(lines), code=0)


def _add_day2_tasks() -> None:
    from hardway.day2 import replace

    replace_help = {"node": "the controller whose member is re-added (NODE, or --node NODE)", **DAY2_HELP}

    @task(name="replace", auto_shortflags=False, help=replace_help)
    @user_errors
    def etcd_replace(c, node, inventory=None, pki_dir=None, dry_run=False, timeout=None):
        """Re-add NODE's etcd member on an empty data dir (stale, removed or lost data); quorum is kept."""
        from hardway import remote

        _help_asked(node, "etcd.replace NODE", etcd_replace, replace_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        with remote.Pool() as pool:
            done = replace.replace(context(inv, pki_state(inv, pki_dir), connector=pool, timeout=wait), node,
                                   dry_run=dry_run)
        print(done.procedure.describe() + "\ndry run: nothing was changed" if dry_run else done.summary())

    snapshot_help = {**DAY2_HELP, "out": "directory for the snapshot (default: backups/<cluster> beside the PKI "
                                         "state dir)",
                     "schedule": "instead: install a systemd timer on every controller taking a local snapshot "
                                 "(an OnCalendar= value such as daily or '*-*-* 03:00'); 'off' removes it"}
    snapshot_help.pop("timeout")

    @task(name="snapshot", auto_shortflags=False, help=snapshot_help)
    @user_errors
    def etcd_snapshot(c, inventory=None, pki_dir=None, dry_run=False, out=None, schedule=None):
        """Save a snapshot from a healthy member to the jumpbox (0600), with its sha256 and status beside it."""
        from hardway import remote
        from hardway.day2 import schedule as schedule_lib
        from hardway.day2 import snapshot

        inv = load_inventory(inventory)
        with remote.Pool() as pool:
            ctx = context(inv, pki_state(inv, pki_dir), connector=pool)
            if schedule is not None:
                proc = schedule_lib.schedule(ctx, schedule, dry_run=dry_run)
                print(proc.describe() + ("\ndry run: nothing was changed" if dry_run else ""))
                return
            proc, snap = snapshot.snapshot(ctx, Path(out) if out else None, dry_run=dry_run)
        print(proc.describe() + "\ndry run: nothing was changed" if dry_run else snap.summary())

    restore_help = {"snapshot": "the snapshot file (its .sha256 must be beside it)", **DAY2_HELP}

    @task(name="restore", auto_shortflags=False, help=restore_help)
    @user_errors
    def etcd_restore(c, snapshot, inventory=None, pki_dir=None, dry_run=False, timeout=None):
        """Restore every member from SNAPSHOT as a new cluster (new token); the old data dirs are moved aside."""
        from hardway import remote
        from hardway.day2 import restore

        _help_asked(snapshot, "etcd.restore SNAPSHOT", etcd_restore, restore_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        with remote.Pool() as pool:
            proc, snap, took = restore.restore(context(inv, pki_state(inv, pki_dir), connector=pool, timeout=wait),
                                               Path(snapshot), dry_run=dry_run)
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
    def reset_task(c, node, yes=False, all=False, inventory=None, pki_dir=None, dry_run=False, timeout=None):
        """Undo what hardway deployed on NODE (from its deployment record); data dirs are moved aside."""
        from hardway import remote
        from hardway.day2 import reset

        _help_asked(node, "reset NODE", reset_task, reset_help)
        wait = seconds(timeout, "--timeout", 90.0)
        inv = load_inventory(inventory)
        names = [n.strip() for n in str(node).split(",") if n.strip()]
        with remote.Pool() as pool:
            proc, took = reset.reset(context(inv, pki_state(inv, pki_dir), connector=pool, timeout=wait), names,
                                     yes=yes, all_controllers=all, dry_run=dry_run)
        print(proc.describe() + "\ndry run: nothing was changed" if dry_run else
              f"reset {', '.join(names)}: done in {took:.1f}s")

    ns.add_task(reset_task)

    @task(name="diagnose", auto_shortflags=False, help={
        "inventory": INVENTORY_HELP, "pki-dir": DAY2_HELP["pki-dir"],
        "lines": "journal lines per unit (default 200)",
        "out": "directory for the bundle (default: diagnose/<cluster> beside the PKI state dir)",
        "dry-run": "print what would be collected from each node, and collect nothing"})
    @user_errors
    def diagnose_task(c, inventory=None, pki_dir=None, lines=None, out=None, dry_run=False):
        """Collect evidence from every node into one tarball, and print which known failures matched where."""
        from hardway import remote
        from hardway.day2 import diagnose

        count = 200 if (n := whole_number(lines, "--lines")) is None else n
        inv = load_inventory(inventory)
        with remote.Pool() as pool:
            ctx = context(inv, pki_state(inv, pki_dir), connector=pool)
            if dry_run:
                print(diagnose.describe(ctx, count, Path(out) if out else None) + "\ndry run: nothing was collected")
                return
            bundle = diagnose.diagnose(ctx, lines=count, out=Path(out) if out else None)
        print(bundle.summary_text(), end="")

    ns.add_task(diagnose_task)


_add_day2_tasks()
