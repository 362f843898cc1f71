"""``invoke etcd.snapshot --schedule CALENDAR``: a systemd timer on every controller taking snapshots.

Rendered like every unit (templates/units/, argv through the ``systemd_exec`` filter, linted by
``systemd-analyze verify`` on the jumpbox, the calendar checked by ``systemd-analyze calendar``)
and pushed with the deployment record, so ``invoke reset`` and ``--schedule off`` remove exactly
these files. Each controller snapshots its own member into hardway's 0700 dir on the node
(``/var/lib/hardway/snapshots/scheduled-<UTC time>.db`` with a ``.sha256``), keeping the newest
seven: a timer on a node cannot copy to the jumpbox, so fetch one with ``scp`` when needed, or
run ``invoke etcd.snapshot`` for a snapshot kept on the jumpbox.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from hardway import deploy, remote
from hardway.chapters.base import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import ctl
from hardway.day2.snapshot import NODE_DIR
from hardway.errors import HardwayError
from hardway.facts import gather
from hardway.files import File
from hardway.inventory import Node
from hardway.paths import unit_file
from hardway.planner import Planner
from hardway.procedure import Procedure
from hardway.systemd import lint_units

NAME = "hardway-etcd-snapshot"
KEEP = 7
SERVICE, TIMER = unit_file(NAME), unit_file(NAME).removesuffix(".service") + ".timer"


def check_calendar(calendar: str) -> str:
    """The OnCalendar= value, as systemd reads it (refused with systemd's own words if it cannot)."""
    if not calendar.strip() or any(c in calendar for c in "\n\r%$\\"):
        raise HardwayError(f"--schedule: {calendar!r} is not a calendar expression such as daily or '*-*-* 03:00'")
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        done = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["not a calendar expression"])[-1]
            raise HardwayError(f"--schedule: {calendar!r}: {said} (examples: daily, hourly, '*-*-* 03:00')")
    return calendar.strip()


def script(ctx: Context, node: Node) -> str:
    d = NODE_DIR
    save = ctl(ctx.inv, node, 'snapshot save "$f"', timeout="300s")
    return (f"umask 077; mkdir -p {d}; f={d}/scheduled-$(date -u +%Y%m%dT%H%M%SZ).db; {save} && "
            f"sha256sum \"$f\" > \"$f.sha256\" && ls -1t {d}/scheduled-*.db | tail -n +{KEEP + 1} | "
            "while read -r old; do rm -f -- \"$old\" \"$old.sha256\"; done")


def files(ctx: Context, node: Node, calendar: str) -> list[File]:
    p = Planner(ctx.inv, node, ctx.state, None, chapter=ETCD.name)
    p.template(SERVICE, f"units/{NAME}.service.j2", (), argv=["/bin/sh", "-c", script(ctx, node)], node=node,
               inv=ctx.inv, directory=NODE_DIR, keep=KEEP)
    p.template(TIMER, f"units/{NAME}.timer.j2", (), calendar=calendar, node=node, inv=ctx.inv)
    return p.files


def lint(planned: list[File]) -> None:
    with tempfile.TemporaryDirectory(prefix="hardway-schedule-") as tmp:
        paths = []
        for f in planned:
            path = Path(tmp) / Path(f.path).name
            path.write_bytes(f.data())
            paths.append(path)
        problems = lint_units(paths)
    if problems:
        raise HardwayError(f"the rendered snapshot timer does not pass systemd-analyze verify: {problems[0]}")


def plan(ctx: Context, calendar: str) -> Procedure:
    inv = ctx.inv
    proc = Procedure(f"etcd.snapshot --schedule {calendar}", ctx.progress)
    timer = Path(TIMER).name
    if calendar.strip().lower() == "off":
        for node in inv.controllers:
            proc.add(node.name, f"stop and remove {timer} and its service (from hardway's record)",
                     f"systemctl disable --now {timer}; rm -f {SERVICE} {TIMER}; systemctl daemon-reload",
                     lambda n=node: _unschedule(ctx, n))
        return proc
    calendar = check_calendar(calendar)
    planned = {n.name: files(ctx, n, calendar) for n in inv.controllers}
    lint([f for fs in planned.values() for f in fs][:2])
    then = ["systemctl daemon-reload", f"systemctl enable --now --quiet {shlex.quote(timer)}"]
    for node in inv.controllers:
        proc.add(node.name, f"install {timer} ({calendar}) and its service; enable the timer",
                 f"(units {SERVICE}, {TIMER})\n" + "; ".join(then),
                 lambda n=node: _install(ctx, n, planned[n.name], then))
    proc.notes.append(f"snapshots land in {NODE_DIR} on each controller; the newest {KEEP} are kept")
    return proc


def _install(ctx: Context, node: Node, planned: list[File], then: list[str]) -> None:
    r = ctx.connector(ctx.inv, node)
    try:
        deploy.install(r, planned, then=then)
    finally:
        r.close()


def _unschedule(ctx: Context, node: Node) -> None:
    r: remote.Remote = ctx.connector(ctx.inv, node)
    try:
        record = gather(r, [deploy.RECORD_FACT])[deploy.RECORD_FACT]
        ours = [p for p in (SERVICE, TIMER) if p in record]
        if not ours:
            return
        left = deploy.PushPlan(record={p: e for p, e in record.items() if p not in ours}, record_changed=True)
        deploy.push(r, left, then=[f"systemctl disable --now {Path(TIMER).name} 2>/dev/null || true",
                                   "rm -f -- " + " ".join(ours), "systemctl daemon-reload"])
    finally:
        r.close()


def schedule(ctx: Context, calendar: str, *, dry_run: bool = False) -> Procedure:
    proc = plan(ctx, calendar)
    if not dry_run:
        proc.run()
    return proc
