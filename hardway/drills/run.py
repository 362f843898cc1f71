"""Breaking and mending: refuse unless the lab and the drill's chapter are up, then inject; undo;
the list as a table or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hardway import deploy, remote
from hardway.chapters import by_name as chapter_named
from hardway.drills.catalogue import DRILLS, Drill, by_name
from hardway.drills.inject import Env
from hardway.errors import HardwayError
from hardway.facts import gather, unit_states
from hardway.table import format_table


@dataclass(frozen=True)
class Done:
    drill: Drill
    node: str
    what: str  # what was done, one line
    cause: str
    fix: str


def require_lab(env: Env, node: str) -> None:
    """The node's machine runs (the lab is recorded and up): else one line."""
    lab = env.lab
    if lab is None:
        return
    if node not in lab.pids():  # type: ignore[attr-defined]
        raise HardwayError(f"lab {lab.name}: {node} is not running; start the lab first "  # type: ignore[attr-defined]
                           f"(`invoke lab.up{'' if lab.name == 'lab' else ' --name ' + lab.name}`)")  # type: ignore


def require_chapter(env: Env, drill: Drill) -> None:
    """The drill's chapter is up on its node: hardway deployed the chapter's files there and its services
    run (one round trip). Breaking what is not built would teach nothing."""
    chapter = chapter_named(drill.chapter)
    node = drill.target(env.inv)
    units = chapter.node_units(node)
    states = unit_states(units)

    def look(r: remote.Remote) -> tuple[bool, list[str]]:
        v = gather(r, [deploy.RECORD_FACT, states])
        deployed = any(e.chapter == chapter.name for e in v[deploy.RECORD_FACT].values())
        return deployed, [f"{u} is {s.active}" for u, s in v[states].items() if s.active != "active"]

    outcome = remote.fan_out(env.inv, [node], look, connector=env.ctx().connector)[0]
    if not outcome.ok or outcome.value is None:
        raise HardwayError(f"drill {drill.name}: {outcome.error or node.name + ' does not answer'}; is the lab up "
                           "(`invoke lab.status`)?")
    deployed, down = outcome.value
    if not deployed or down:
        why = "hardway has not deployed it there" if not deployed else ", ".join(down)
        raise HardwayError(f"drill {drill.name} needs chapter {chapter.name} up on {node.name} ({why}): run "
                           f"`invoke {chapter.task}` first")


def break_lab(env: Env, name: str) -> Done:
    """Inject drill ``name`` into the lab (after checking the lab and the chapter are up)."""
    drill = by_name(name)
    node = drill.target(env.inv)
    require_lab(env, node.name)
    require_chapter(env, drill)
    what = drill.inject(env, node)
    cause, fix = drill.says(env.inv)
    return Done(drill, node.name, what, cause, fix)


def undo(env: Env, name: str) -> Done:
    """Put the lab back after drill ``name`` (whether or not its fix was run already)."""
    drill = by_name(name)
    node = drill.target(env.inv)
    require_lab(env, node.name)
    what = drill.undo(env, node)
    cause, fix = drill.says(env.inv)
    return Done(drill, node.name, what, cause, fix)


def rows(env: Env | None = None) -> list[dict[str, str]]:
    """One row per drill; with a lab's inventory, the node and the words verify will print."""
    out = []
    for d in DRILLS:
        cause, fix = d.says()
        row = {"drill": d.name, "chapter": d.chapter, "breaks": d.breaks, "check": d.check, "cause": cause,
               "fix": fix, "how": d.how, "node": "", "fix_runs_in_lab": "yes" if d.runnable else "no"}
        if env is not None:
            try:
                row["node"] = d.target(env.inv).name
                row["cause"], row["fix"] = d.says(env.inv)
            except HardwayError:
                row["node"] = "-"
        out.append(row)
    return out


def format_rows(table: list[dict[str, str]]) -> str:
    return format_table(("DRILL", "CHAPTER", "NODE", "VERIFY CHECK", "BREAKS"),
                        [(r["drill"], r["chapter"], r["node"] or "-", r["check"], r["breaks"]) for r in table],
                        notes=[[f"verify says: {r['cause']} … fix: {r['fix']}"] for r in table])


def to_json(table: list[dict[str, str]]) -> str:
    return json.dumps({"drills": table}, indent=2)
