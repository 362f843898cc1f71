"""Chapter etcd: a TLS etcd cluster, one member per controller (`invoke bootstrap-etcd`).

Preflight refuses to touch anything when a node is unreachable, the binary does not fit, a port
is taken or a data dir belongs to another cluster; the push writes only files whose sha256
differs; stopped members start together, changed running members restart one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from hardway import services
from hardway.chapters.base import Chapter, Context, Finding, Survey
from hardway.chapters.etcd import apply, cluster, files, membership, preflight, verify
from hardway.chapters.etcd.signatures import SIGNATURES
from hardway.checks import Check
from hardway.facts import Fact, FactValues
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN
from hardway.planner import Planner
from hardway.procedure import Procedure


class EtcdChapter(Chapter):
    name = "etcd"
    title = "Bootstrapping the etcd cluster"
    summary = ("etcd stores every object of the cluster. Each controller runs one member; members talk TLS to "
               "each other and to clients, and accept only clients with a certificate from etcd's own CA.")
    task = "bootstrap-etcd"
    applied_by_task = True
    survey_at_once = True  # etcdctl calls mostly wait; the fsync probe is `alone`: it runs after them
    units = (files.UNIT,)
    binaries = ("etcd", "etcdctl", "etcdutl")
    no_block_start = True
    signatures = SIGNATURES

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return inv.controllers

    def plan_files(self, p: Planner) -> None:
        files.plan_files(p)

    def jumpbox_findings(self, ctx: Context, planned: dict[str, list[File]]) -> list[Finding]:
        return preflight.jumpbox_findings(ctx.inv, planned)

    def node_facts(self, ctx: Context, node: Node, planned: list[File]) -> list[Fact]:
        return preflight.node_facts(ctx.inv, node)

    def check_facts(self, ctx: Context, node: Node, planned: list[File]) -> list[Fact]:
        return verify.member_ask(ctx.inv, node, planned).all()

    def judge(self, ctx: Context, node: Node, facts: FactValues) -> list[Finding]:
        binary = next((f.source for f in ctx.files(self, node) if f.path == f"{BIN}/etcd" and f.source), None)
        arch = preflight.elf_arch(binary) if binary is not None else None
        return preflight.judge_preflight(ctx.inv, node, preflight.node_facts_from(ctx.inv, node, facts), arch)

    def judge_together(self, ctx: Context, surveys: Sequence[Survey]) -> list[Finding]:
        view = cluster.ClusterView(ctx.inv, {s.node.name: cluster.view_from(ctx.inv, s.node, s.facts)
                                             for s in surveys})
        together = preflight.judge_together(ctx.inv, view)
        for s in surveys:
            if s.node.name in together.join:
                s.hold = (files.UNIT,)
        return together.findings

    def settle(self, ctx: Context, nodes: Sequence[Node], plans: dict[str, services.StartPlan]) -> dict[str, list[str]]:
        restarted = super().settle(ctx, nodes, plans)
        for node in (n for n in nodes if plans[n.name].hold):  # one membership change at a time
            view = cluster.gather_view(ctx.inv, ctx.connector)
            proc = Procedure(f"{self.task}: {node.name} joins the running cluster", ctx.progress)
            membership.add_join_steps(proc, ctx, view, node, ctx.files(self, node), f"invoke {self.task}")
            proc.run()
            apply.wait_one_leader(ctx, self.targets(ctx.inv))
        return restarted

    def wait_healthy(self, ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
        apply.wait_healthy(ctx, nodes)
        if nodes:
            apply.wait_one_leader(ctx, self.targets(ctx.inv))

    def data_dirs(self, inv: Inventory) -> tuple[str, ...]:
        return (inv.etcd.data_dir,)

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(self.name, "etcd", "a healthy TLS etcd cluster matching the inventory",
                      lambda: verify.verify(ctx, {n.name: ctx.files(self, n) for n in ctx.inv.controllers}))]


CHAPTER = EtcdChapter()
