"""Chapter control-plane: kube-apiserver, kube-controller-manager and kube-scheduler on every controller,
and HAProxy in front of the apiservers on every load-balancer node (`invoke bootstrap-control-plane`).

The load balancer is part of this chapter, not one of its own: it exists only for the apiservers, the
user's story is one command that ends with the API answering through it, and one `verify --chapter
control-plane` shows both sides. Rotation's "backends first" order holds: HAProxy's unit comes after
the apiservers in ``units``, and an apiserver restart drains it there first.

Preflight (etcd healthy, binaries of the node's architecture, every flag known to its binary, the
apiserver certificate naming the endpoint, ports free, HAProxy installed) changes nothing when it
fails; the push starts every stopped service at once; a running one whose files changed restarts one
node at a time, each ready before the next, so a failed start leaves the others serving.
"""

from __future__ import annotations

from collections.abc import Sequence

from hardway.chapters.base import Chapter, Context, Finding
from hardway.chapters.control_plane import apply, files, preflight, verify
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane.files import (
    COMPONENTS,
    kube_apiserver_argv,
    kube_controller_manager_argv,
    kube_scheduler_argv,
)
from hardway.checks import Check
from hardway.facts import Fact, FactValues
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN
from hardway.planner import Planner

__all__ = ["CHAPTER", "ControlPlaneChapter", "kube_apiserver_argv", "kube_controller_manager_argv",
           "kube_scheduler_argv"]


class ControlPlaneChapter(Chapter):
    name = "control-plane"
    title = "Bootstrapping the Kubernetes control plane"
    summary = ("The apiserver is the cluster's front door: every component and kubectl talk to it, and it alone "
               "talks to etcd. The controller manager and the scheduler run beside it on every controller and "
               "elect one leader each. A load balancer gives the apiservers one address.")
    task = "bootstrap-control-plane"
    applied_by_task = True
    units = (*COMPONENTS, lb.UNIT)
    binaries = (*COMPONENTS, files.KUBECTL)  # HAProxy is the load balancer's Debian package, not distributed
    survey_at_once = True  # hashing kubectl, asking etcd, listing ports: independent, and none times anything
    signatures = verify.as_signatures()  # what `invoke diagnose` matches in these units' journals

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return (*inv.controllers, *inv.loadbalancers)

    def node_units(self, node: Node) -> tuple[str, ...]:
        return (COMPONENTS if node.is_controller else ()) + ((lb.UNIT,) if node.is_loadbalancer else ())

    def unit_label(self, inv: Inventory, unit: str) -> str:
        return files.label(inv, unit)

    def plan_files(self, p: Planner) -> None:
        if p.node.is_controller:
            files.plan_files(p)
        if p.node.is_loadbalancer:
            lb.plan_files(p)

    def jumpbox_findings(self, ctx: Context, planned: dict[str, list[File]]) -> list[Finding]:
        return preflight.jumpbox_findings(ctx.inv, ctx.state, planned)

    def node_facts(self, ctx: Context, node: Node, planned: list[File]) -> list[Fact]:
        return preflight.node_facts(ctx.inv, node, self.node_units(node))

    def judge(self, ctx: Context, node: Node, facts: FactValues) -> list[Finding]:
        real = {f.path.rsplit("/", 1)[1]: f.source for f in ctx.files(self, node)
                if f.source is not None and f.path.startswith(f"{BIN}/")}
        return preflight.judge(ctx.inv, node, facts, self.node_units(node), real)  # type: ignore[arg-type]

    def wait_healthy(self, ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
        apply.wait_healthy(ctx, nodes, units)

    def restart(self, ctx: Context, node: Node, unit: str) -> None:
        if unit == files.APISERVER:
            apply.restart_apiserver(ctx, node)
        elif unit == lb.UNIT:
            apply.reload_balancer(ctx, node)
        else:
            super().restart(ctx, node, unit)

    def finish(self, ctx: Context) -> list[str]:
        return apply.finish(ctx)

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(self.name, "control-plane", "apiservers, controller managers, schedulers and the load "
                      "balancer: running as rendered, ready, serving the right certificate",
                      lambda: verify.verify(ctx, self))]


CHAPTER = ControlPlaneChapter()
