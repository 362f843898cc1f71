"""`invoke lab.up`, `lab.down`, `lab.status`: the local lab of systemd machines."""

from __future__ import annotations

import shlex

from invoke import Collection, Exit, Task, task
from invoke.parser import Argument

from .common import PKI_DIR_HELP, ROOT, help_asked, seconds, user_errors, whole_number

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
def lab_up(c, nodes=None, workers=None, name="lab", subnet=None, timeout=None, loadbalancers=None) -> None:
    """Boot the local lab (systemd-nspawn machines in network namespaces); no-op if it runs."""
    from hardway import lab

    copy = ROOT / "inventory" / "lab.yaml" if name == lab.DEFAULT_NAME else None
    lab.up(name, whole_number(nodes, "--nodes"), whole_number(workers, "--workers"), subnet, inventory_copy=copy,
           loadbalancers=whole_number(loadbalancers, "--loadbalancers"),
           timeout=None if timeout is None else seconds(timeout, "--timeout", 0.0))


@task(name="down", auto_shortflags=False, help={"name": LAB_NAME_HELP})
@user_errors
def lab_down(c, name="lab") -> None:
    """Remove the lab: machines, mounts, network namespaces, links and state (also a crashed run's)."""
    from hardway import lab

    lab.down(name)


@task(name="status", auto_shortflags=False, help={"name": LAB_NAME_HELP})
@user_errors
def lab_status(c, name="lab") -> None:
    """Table of the lab's nodes: address, roles, machine, systemd state, SSH; exit 1 if any is not ok."""
    from hardway import lab

    rows = lab.status(name)
    print(lab.format_status(rows))
    if not all(r.ok for r in rows):
        raise Exit(f"lab.status: some nodes of lab {name} are not running or not reachable", code=1)


BREAK_HELP = {
    "drill": "the drill to inject (`invoke lab.break --list` names them)",
    "name": LAB_NAME_HELP,
    "pki-dir": PKI_DIR_HELP,
    "undo": "put the lab back after the drill (whether or not you ran the fix already)",
    "list": "list the drills: what each breaks, on which node, what verify says and the fix",
    "json": "with --list: the list as JSON",
}


class _ListFlag(Argument):
    """``--list`` stands in for the DRILL positional: invoke has no optional positional arguments, so
    `invoke lab.break --list` would otherwise be refused for the missing DRILL."""

    drill: Argument | None = None

    def set_value(self, value, cast: bool = True) -> None:
        super().set_value(value, cast)
        if self.value and self.drill is not None and self.drill.value is None:
            self.drill.set_value("", cast=False)


class _BreakTask(Task):
    def get_arguments(self, ignore_unknown_help=None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        drill = next(a for a in args if a.name == "drill")
        for i, a in enumerate(args):
            if a.name == "list":
                args[i] = _ListFlag(names=a.names, kind=a.kind, default=a.default, help=a.help,
                                    positional=a.positional, optional=a.optional, incrementable=a.incrementable,
                                    attr_name=a.attr_name)
                args[i].drill = drill
        return args


@task(klass=_BreakTask, name="break", auto_shortflags=False, positional=["drill"], help=BREAK_HELP)
@user_errors
def lab_break(c, drill=None, name="lab", pki_dir=None, undo=False, list=False, json=False) -> None:
    """Inject one known failure into the lab (a drill), then let `invoke verify` name the cause and the fix."""
    from hardway import drills
    from hardway import lab as lab_lib
    from hardway.errors import HardwayError

    from .common import pki_state

    help_asked(drill, "lab.break", lab_break.body, BREAK_HELP)
    if list:
        env = None
        if lab_lib.load_layout(name) is not None:
            the_lab = lab_lib.get(name)
            env = drills.Env(the_lab.inventory, pki_state(the_lab.inventory, pki_dir), the_lab)
        table = drills.rows(env)
        print(drills.to_json(table) if json else drills.format_rows(table))
        return
    if not drill:
        raise HardwayError("lab.break: name a drill (`invoke lab.break --list` lists them)")
    drills.by_name(drill)
    the_lab = lab_lib.get(name)
    env = drills.Env(the_lab.inventory, pki_state(the_lab.inventory, pki_dir), the_lab)
    flags = "" if name == lab_lib.DEFAULT_NAME else f" --inventory {shlex.quote(str(the_lab.inventory_path))}"
    flags += f" --pki-dir {shlex.quote(pki_dir)}" if pki_dir else ""
    if undo:
        done = drills.undo(env, drill)
        print(f"lab.break {drill} --undo: {done.what}")
        return
    done = drills.break_lab(env, drill)
    print(f"lab.break {drill}: {done.what}")
    print(f"now run `invoke verify{flags}`: its {done.drill.check} check names the cause ({done.cause}) and the fix "
          f"({done.fix})")
    print(f"put the lab back with `invoke lab.break {drill}{'' if name == lab_lib.DEFAULT_NAME else ' --name ' + name}"
          f"{' --pki-dir ' + shlex.quote(pki_dir) if pki_dir else ''} --undo`")


lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
lab_ns.add_task(lab_status, name="status")
lab_ns.add_task(lab_break, name="break")
