"""`invoke lab.up`, `lab.down`, `lab.status`: the local lab of systemd machines."""

from __future__ import annotations

from invoke import Collection, Exit, task

from .common import ROOT, seconds, user_errors, whole_number

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
