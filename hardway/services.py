"""systemd on the nodes: commands, and the decisions about what to start or restart.

The decisions are pure functions of facts (unit states, file stats), so they are tested without a
machine; the commands are strings that a chapter runs, often inside the same exec as its push.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardway.errors import HardwayError
from hardway.facts import FileStat, UnitState, gather, unit_states
from hardway.files import File

if TYPE_CHECKING:
    from hardway.remote import CommandResult, Remote

UNIT_DIR = "/etc/systemd/system"


def systemctl_command(verb: str, *units: str) -> str:
    return " ".join(["systemctl", verb, *map(shlex.quote, units)])


def systemctl(remote: Remote, verb: str, *units: str, check: bool = True, timeout: int | None = None) -> CommandResult:
    return remote.run(systemctl_command(verb, *units), check=check, timeout=timeout)


def unit_path(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}.service"


def stale_units(files: Sequence[File], stats: dict[str, FileStat | None], states: dict[str, UnitState]) -> set[str]:
    """Active units started before one of their files last changed on the node.

    This is what makes an interrupted push converge: a re-run writes nothing new, yet still
    restarts a service that never picked up the files an earlier run installed.
    """
    stale = set()
    for unit, st in states.items():
        if st.active != "active" or st.since is None:
            continue
        newest = max((s.changed for f in files if unit in f.services and (s := stats.get(f.path)) is not None),
                     default=0)
        if newest > st.since:
            stale.add(unit)
    return stale


@dataclass(frozen=True)
class StartPlan:
    """What one node's units need after a push."""

    reload: bool  # a unit file changed: daemon-reload first
    enable: tuple[str, ...]  # not enabled yet
    start: tuple[str, ...]  # not running: start
    restart: tuple[str, ...]  # running but their files changed (now or in an interrupted run)
    hold: tuple[str, ...] = ()  # not running, and left for the chapter to start its own way (etcd: a join)


def plan_start(units: Sequence[str], written: Collection[str], files: Sequence[File],
               stats: dict[str, FileStat | None], states: dict[str, UnitState],
               hold: Collection[str] = ()) -> StartPlan:
    """Pure: from what was just written and the units' states before it, in ``units`` order.
    ``hold``: units to leave stopped (the caller starts them)."""
    changed = {s for f in files if f.path in written for s in f.services}
    stale = stale_units(files, stats, states)
    running = {u for u, st in states.items() if st.active == "active"}
    return StartPlan(
        reload=any(p.startswith(f"{UNIT_DIR}/") for p in written),
        enable=tuple(u for u in units if states.get(u, UnitState("unknown", None, "")).enabled != "enabled"),
        start=tuple(u for u in units if u not in running and u not in hold),
        restart=tuple(u for u in units if u in running and (u in changed or u in stale)),
        hold=tuple(u for u in units if u not in running and u in hold),
    )


def start_commands(plan: StartPlan, *, no_block: bool = False) -> list[str]:
    """daemon-reload, enable and start, for the push's follow-up; restarts are the caller's (rolling)."""
    cmds = ["systemctl daemon-reload"] if plan.reload or plan.enable else []
    if plan.enable:  # `enable` reloads the manager again unless told not to: 0.5 s per node measured here
        cmds.append(systemctl_command("enable", "--quiet", "--no-reload", *plan.enable))
    if plan.start:
        cmds.append(systemctl_command("reset-failed", *plan.start) + " 2>/dev/null || true")
        cmds.append(systemctl_command("start", *(["--no-block"] if no_block else []), *plan.start))
    return cmds


def wait_active(remote: Remote, units: Sequence[str], timeout: float, poll: float = 0.2) -> float:
    """Poll until every unit is active; fail at once on a failed unit. Returns the seconds waited."""
    t0 = time.monotonic()
    fact = unit_states(units)
    while True:
        states = gather(remote, [fact])[fact]
        failed = [u for u, s in states.items() if s.active == "failed"]
        if failed:
            raise HardwayError(f"{remote.node.name}: {failed[0]} failed to start; see `journalctl -u {failed[0]}` "
                               "there")
        if all(s.active == "active" for s in states.values()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            waiting = ", ".join(f"{u} ({s.active})" for u, s in states.items() if s.active != "active")
            raise HardwayError(f"{remote.node.name}: not active after {timeout:.0f}s: {waiting}")
        time.sleep(poll)
