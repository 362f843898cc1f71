"""Chapter workers: containerd, runc, the CNI plugins, kubelet and kube-proxy on every worker
(`invoke bootstrap-workers [--fix]`).

Preflight judges each worker's kernel and OS the way the kubelet needs them (swap, br_netfilter,
sysctls, the resolver pods inherit, socat/conntrack/ipset, cgroups) and stops before anything is
pushed; ``--fix`` persists what hardway may repair. The push writes only files whose sha256 differs;
containerd starts first, then kubelet and kube-proxy (stand-ins where the inventory names no binary);
the wait ends when each answers. Checks: ``verify --chapter workers``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hardway import flagspec
from hardway.chapters.base import Chapter, Context, Finding, Step, Survey
from hardway.chapters.workers import apply, files, verify
from hardway.chapters.workers.files import containerd_argv, kube_proxy_argv, kubelet_argv, plan_files
from hardway.checks import FAIL, Check
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN, CNI_BIN
from hardway.planner import Planner

__all__ = ["CHAPTER", "WorkersChapter", "containerd_argv", "kube_proxy_argv", "kubelet_argv", "plan_files"]


def jumpbox_findings(inv: Inventory, planned: dict[str, list[File]], cache_dir) -> list[Finding]:
    """Every required binary has a source; containerd's version is known and agrees with itself."""
    out: list[Finding] = []
    if not inv.workers:
        return out
    sample = {f.path for f in planned[inv.workers[0].name]}
    for directory, name, _, required in files.BINARIES:
        if required and f"{directory}/{name}" not in sample:
            where = "installs them (scripts/setup.sh)" if directory in (BIN, CNI_BIN) else ""
            out.append(Finding("-", FAIL, f"binaries.{name}: {inv.path} gives no {name} binary (or its path does not "
                                          f"exist); add its path, or its url and sha256 (on the lab host, Debian's "
                                          f"containerd, runc and containernetworking-plugins packages {where})"))
    standing_in = [c for c in files.STANDIN_COMPONENTS if files.is_standin(inv, c)]
    if standing_in and not files.standin_covered(inv):
        where = getattr(inv, "versions_where", {}).get("kubernetes", f"{inv.path}: versions.kubernetes")
        have = ", ".join(flagspec.available_versions())
        out.append(Finding("-", FAIL, f"{where}: {' and '.join(standing_in)} have no binary under binaries, and "
                                      f"their stand-ins exist for Kubernetes {have} only (not "
                                      f"{files.kubernetes_version(inv)}); name the real binaries under binaries, or "
                                      f"pin versions.kubernetes to '{files.PINNED_KUBERNETES}'"))
    version, _ = files.containerd_version(inv, cache_dir)
    asked = files.binary_version(inv, cache_dir)
    if f"{BIN}/{files.CONTAINERD}" in sample:
        if version is None:
            out.append(Finding("-", FAIL, "containerd's version is unknown (its binary does not run here), and its "
                                          "config schema depends on it; set versions.containerd in the inventory"))
        elif asked is not None and files.config_schema(asked) != files.config_schema(version):
            out.append(Finding("-", FAIL, f"versions.containerd says {version} but the containerd binary says "
                                          f"{asked}: the config schema would be wrong; correct versions.containerd"))
    return out


class WorkersChapter(Chapter):
    name = "workers"
    title = "Bootstrapping the Kubernetes worker nodes"
    summary = ("Each worker runs containerd (with runc and the CNI plugins) to run pods, the kubelet to register "
               "the node and start its pods, and kube-proxy to route Service traffic. The kernel must forward "
               "and filter bridged traffic, swap must be off, and pods must inherit a resolver that is not "
               "a loopback stub.")
    task = "bootstrap-workers"
    applied_by_task = True
    fixable = True  # `invoke bootstrap-workers --fix`
    units = files.UNITS
    binaries = tuple(name for _, name, _, _ in files.BINARIES)

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return inv.workers

    def plan_files(self, p: Planner) -> None:
        files.plan_files(p)

    def unit_label(self, inv: Inventory, unit: str) -> str:
        return files.label(inv, unit)

    def jumpbox_findings(self, ctx: Context, planned: dict[str, list[File]]) -> list[Finding]:
        return jumpbox_findings(ctx.inv, planned, ctx.cache_dir)

    def survey(self, ctx: Context, nodes: Sequence[Node] | None = None, *, checks: bool = False) -> list[Survey]:
        # the workers' checks read nothing in the survey (no ``check_facts``): ``checks`` changes nothing
        return apply.survey(ctx, self, self.targets(ctx.inv) if nodes is None else nodes)

    def node_steps(self, ctx: Context, survey: Survey) -> list[Step]:
        return apply.fix_steps(survey)

    def wait_healthy(self, ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
        apply.wait_healthy(ctx, nodes, units)

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(self.name, "workers", "each worker ready for pods; the apiserver reaches every kubelet",
                      lambda: verify.verify(ctx, self))]


CHAPTER = WorkersChapter()
