"""Chapter pod-routes: every worker and controller routes each other worker's pod subnet via that
worker's address (`invoke pod-routes`), as the tutorial's chapter 11 does by hand.

The routes hardway adds carry protocol 211 (``ip route ... proto 211``), so hardway adds and removes
only its own: a route to a pod subnet that already points somewhere else is somebody else's and
stops the chapter, on every node, before anything changes. The live routes are computed from facts
(the node's routing table): missing ones are added, hardway's routes to subnets no longer in the
inventory are removed, and nothing happens when all is in place. A oneshot unit,
hardway-pod-routes.service, puts them back at boot (the node's own network config is not touched:
ifupdown, networkd and NetworkManager all leave it alone).

``clear_commands()`` is what `reset NODE` runs on a node leaving the cluster.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass, field

from hardway import remote
from hardway.chapters.base import Chapter, Context, Finding, Step, Survey
from hardway.checks import FAIL, OK, SKIP, WARN, Check, CheckResult
from hardway.facts import Fact, FactOutput, FactValues, file_hashes, gather, unit_states
from hardway.inventory import Inventory, Node
from hardway.paths import unit_file
from hardway.planner import Planner
from hardway.remote import Remote

NAME = "pod-routes"
PROTO = 211  # hardway's routes (iproute2's own numbers stop at 192; 211 is not one of the named)
UNIT = "hardway-pod-routes"
UNIT_PATH = unit_file(UNIT)
IP = "/usr/sbin/ip"
PROBE_LINK = "hwprobe0"  # a bridge verify adds for a moment where no interface holds a pod gateway
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Route:
    dst: IPNet
    via: IPAddr
    owner: str = ""  # the worker whose pod subnet it is

    def add(self) -> str:
        return f"ip route add {self.dst} via {self.via} proto {PROTO}"

    @property
    def argv(self) -> list[str]:
        """The boot unit's command (systemd wants an absolute path: /usr/sbin/ip on merged-/usr systems
        and on Debian, Ubuntu, Fedora alike)."""
        return [IP, "route", "add", str(self.dst), "via", str(self.via), "proto", str(PROTO)]

    def delete(self) -> str:
        return f"ip route del {self.dst} via {self.via} proto {PROTO}"


@dataclass(frozen=True)
class Present:
    """A route in the node's main table, as `ip -j route` shows it."""

    dst: str  # "10.200.1.0/24", "default"
    gateway: str | None
    dev: str | None
    protocol: str

    @property
    def ours(self) -> bool:
        return self.protocol == str(PROTO)

    def describe(self) -> str:
        how = f"via {self.gateway}" if self.gateway else f"dev {self.dev}"
        return f"{self.dst} {how} (proto {self.protocol})"


def nodes_routed(inv: Inventory) -> tuple[Node, ...]:
    """Who gets the routes: every worker and every controller (the apiserver reaches pods too)."""
    return tuple(n for n in inv.nodes if n.is_worker or n.is_controller)


def wanted(inv: Inventory, node: Node) -> list[Route]:
    """Pure: the routes ``node`` needs, one per other worker."""
    return [Route(w.pod_cidr, w.address, w.name) for w in inv.workers if w.name != node.name and w.pod_cidr]


# --- facts ----------------------------------------------------------------------------------


def _present(out: FactOutput) -> list[Present]:
    found = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line.startswith("["):
            continue
        for r in json.loads(line):
            dst = r.get("dst", "")
            if dst and dst != "default" and "/" not in dst:
                dst = str(ipaddress.ip_network(dst))  # a host route: 10.0.0.1 -> 10.0.0.1/32
            found.append(Present(dst, r.get("gateway"), r.get("dev"), str(r.get("protocol", "boot"))))
    return found


ROUTES: Fact[list[Present]] = Fact("routes", "ip -j -4 route show table main; echo; ip -j -6 route show table main",
                                   _present)


def _direct(out: FactOutput) -> dict[str, str | None]:
    """address -> None if directly connected, else the gateway the node reaches it through."""
    found: dict[str, str | None] = {}
    for line in out.stdout.splitlines():
        address, _, answer = line.partition(" ")
        try:
            got = json.loads(answer) if answer.strip() else []
        except ValueError:
            got = []
        found[address] = got[0].get("gateway", None) if got else "unreachable"
    return found


def reachability(addresses: list[str]) -> Fact[dict[str, str | None]]:
    shell = "; ".join(f"printf '%s ' {shlex.quote(a)}; ip -j route get {shlex.quote(a)} 2>/dev/null || echo" for a in
                      addresses) or "true"
    return Fact("route_get", shell, _direct, tuple(addresses))


# --- judging and planning (pure) ---------------------------------------------------------------


@dataclass
class RoutePlan:
    add: list[Route] = field(default_factory=list)
    remove: list[Present] = field(default_factory=list)
    kept: list[Route] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def plan_routes(want: list[Route], present: list[Present]) -> RoutePlan:
    """What to add and remove; a route to a wanted subnet that is not hardway's and points elsewhere
    is a conflict (never replaced)."""
    plan = RoutePlan()
    wanted_dsts = {str(r.dst): r for r in want}
    for r in want:
        same = [p for p in present if p.dst == str(r.dst)]
        if any(p.gateway == str(r.via) for p in same):
            plan.kept.append(r)
            continue
        foreign = [p for p in same if not p.ours]
        if foreign:
            plan.conflicts.append(f"a route {foreign[0].describe()} already exists; hardway would route "
                                  f"{r.dst} ({r.owner}'s pods) via {r.via}. Remove it (`ip route del {r.dst}`) if "
                                  "it is stale, or fix the inventory")
            continue
        plan.add.append(r)
    for p in present:
        if p.ours and (p.dst not in wanted_dsts or p.gateway != str(wanted_dsts[p.dst].via)):
            plan.remove.append(p)
    return plan


def judge(inv: Inventory, node: Node, present: list[Present], direct: dict[str, str | None]) -> list[Finding]:
    out = []
    want = wanted(inv, node)
    for c in plan_routes(want, present).conflicts:
        out.append(Finding(node.name, FAIL, c))
    for r in want:
        via = direct.get(str(r.via))
        if via is not None:
            how = "is unreachable" if via == "unreachable" else f"is reached through the router {via}"
            out.append(Finding(node.name, FAIL, f"{r.owner}'s address {r.via} {how}, not directly: a route to "
                                                "its pods via it needs the nodes on one link (or an overlay)"))
    return out


def steps(plan: RoutePlan, enabled: bool) -> list[Step]:
    out = [Step(f"route {p.describe()} removed", f"ip route del {p.dst}" + (f" via {p.gateway}" if p.gateway else "")
                + f" proto {PROTO}") for p in plan.remove]
    out += [Step(f"route {r.dst} via {r.via} added", r.add()) for r in plan.add]
    if not enabled:
        out.append(Step(f"{UNIT} enabled (the routes come back at boot)", f"systemctl enable --quiet {UNIT}"))
    return out


def clear_commands() -> list[str]:
    """Take every route hardway added off a node, and its boot unit out of the boot (for `reset`)."""
    return [f"ip -4 route flush proto {PROTO}", f"ip -6 route flush proto {PROTO}",
            f"systemctl disable --quiet {UNIT} 2>/dev/null || true"]


# --- the chapter -----------------------------------------------------------------------------------


class PodRoutesChapter(Chapter):
    name = NAME
    title = "Provisioning pod network routes"
    summary = ("Pods get addresses from their worker's pod_cidr. For a pod on one worker to reach a pod on another, "
               "every node needs a route to each other worker's pod subnet via that worker's address: the "
               "tutorial's routes, kept by hardway and put back at boot.")
    task = "pod-routes"
    applied_by_task = True

    def targets(self, inv: Inventory) -> tuple[Node, ...]:
        return nodes_routed(inv)

    def plan_files(self, p: Planner) -> None:
        p.template(UNIT_PATH, "units/hardway-pod-routes.service.j2", (), routes=wanted(p.inv, p.node), proto=PROTO,
                   node=p.node)

    def node_facts(self, ctx: Context, node: Node, files) -> list[Fact]:
        return [ROUTES, reachability([str(r.via) for r in wanted(ctx.inv, node)]), unit_states((UNIT,))]

    def judge(self, ctx: Context, node: Node, facts: FactValues) -> list[Finding]:
        want = wanted(ctx.inv, node)
        return judge(ctx.inv, node, facts[ROUTES], facts[reachability([str(r.via) for r in want])])

    def node_steps(self, ctx: Context, survey: Survey) -> list[Step]:
        enabled = survey.facts[unit_states((UNIT,))][UNIT].enabled == "enabled"
        return steps(plan_routes(wanted(ctx.inv, survey.node), survey.facts[ROUTES]), enabled)

    def reset_commands(self, ctx: Context, node: Node) -> list[str]:
        return clear_commands()

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(NAME, "routes", "every node routes each other worker's pod subnet, and it survives a reboot",
                      lambda: route_results(ctx, self)),
                Check(NAME, "ping", "a packet from each worker's pod gateway reaches every other worker's",
                      lambda: ping_results(ctx))]


CHAPTER = PodRoutesChapter()


# --- checks ------------------------------------------------------------------------------------


def judge_routes(inv: Inventory, node: Node, present: list[Present], unit_sha: str | None, planned_sha: str,
                 enabled: str) -> list[CheckResult]:
    """Pure: one node's routing table and boot unit -> results."""
    res = []
    plan = plan_routes(wanted(inv, node), present)
    for c in plan.conflicts:
        res.append(CheckResult(NAME, "routes", node.name, FAIL, c, "then run `invoke pod-routes`"))
    for r in plan.add:
        res.append(CheckResult(NAME, "routes", node.name, FAIL, f"no route to {r.dst} ({r.owner}'s pods) via {r.via}: "
                                                                "pods here cannot reach pods there",
                               "run `invoke pod-routes`"))
    for p in plan.remove:
        res.append(CheckResult(NAME, "routes", node.name, WARN, f"hardway's route {p.describe()} leads to no "
                                                                "worker of the inventory", "run `invoke pod-routes`"))
    if not plan.conflicts and not plan.add:
        res.append(CheckResult(NAME, "routes", node.name, OK, f"{len(plan.kept)} route(s) to other workers' pod "
                                                              "subnets in place"))
    if unit_sha != planned_sha or enabled != "enabled":
        why = "missing" if unit_sha is None else ("differs from the plan" if unit_sha != planned_sha else
                                                  f"not enabled ({enabled or 'no unit'})")
        res.append(CheckResult(NAME, "boot", node.name, FAIL, f"{UNIT_PATH} {why}: the routes would not come back "
                                                              "after a reboot", "run `invoke pod-routes`"))
    else:
        res.append(CheckResult(NAME, "boot", node.name, OK, f"{UNIT} enabled: the routes come back at boot"))
    return res


def route_results(ctx: Context, chapter: Chapter) -> list[CheckResult]:
    inv = ctx.inv
    results = []

    def look(r: Remote) -> tuple[list[Present], str | None, str]:
        hashes, states = file_hashes([UNIT_PATH]), unit_states((UNIT,))
        v = gather(r, [ROUTES, hashes, states])
        return v[ROUTES], v[hashes][UNIT_PATH], v[states][UNIT].enabled

    for o in remote.fan_out(inv, nodes_routed(inv), look, connector=ctx.connector):
        if not o.ok or o.value is None:
            results.append(CheckResult(NAME, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                       "start the machine / fix SSH"))
            continue
        planned = next(f for f in ctx.files(chapter, o.node) if f.path == UNIT_PATH)
        results.extend(judge_routes(inv, o.node, *o.value[:2], planned.sha256, o.value[2]))
    return results


def gateway(w: Node) -> IPAddr:
    """The worker's pod gateway: the first address of its pod subnet (the CNI bridge's, cni0)."""
    assert w.pod_cidr is not None
    return w.pod_cidr[1]


def _lines(out: FactOutput) -> list[str]:
    return out.stdout.splitlines()


def probe_setup(gw: IPAddr) -> Fact[list[str]]:
    """Make sure an interface holds the gateway address; print 'added' if a probe bridge had to."""
    plen = 32 if gw.version == 4 else 128
    return Fact("pod_gateway", f"if ip -o addr show | grep -qw 'inet6\\? {gw}/[0-9]*'; then echo present; else "
                               f"ip link add {PROBE_LINK} type bridge && ip addr add {gw}/{plen} dev {PROBE_LINK} "
                               f"{'nodad ' if gw.version == 6 else ''}&& ip link set {PROBE_LINK} up && echo added; fi",
                _lines, (str(gw),))


def pings(src: IPAddr, targets: list[tuple[str, IPAddr]]) -> Fact[list[str]]:
    """Ping every other worker's gateway from this one's, all at once: '<worker> ok|fail'."""
    body = " ".join(f"(ping -c 1 -W 2 -I {src} {gw} >/dev/null 2>&1 && echo '{w} ok' || echo '{w} fail') &"
                    for w, gw in targets)
    return Fact("pod_pings", f"command -v ping >/dev/null || {{ echo no-ping; exit 0; }}; {body} wait",
                _lines, (str(src), tuple(w for w, _ in targets)))


PROBE_CLEANUP: Fact[list[str]] = Fact("probe_cleanup", f"ip link del {PROBE_LINK} 2>/dev/null; true", _lines)


def ping_results(ctx: Context) -> list[CheckResult]:
    """Each worker pings every other worker's pod gateway from its own (a probe bridge holds the
    address where no cni0 does yet, and is removed right after)."""
    inv = ctx.inv
    workers = [w for w in inv.workers if w.pod_cidr is not None]
    if len(workers) < 2:
        return [CheckResult(NAME, "ping", "-", SKIP, "fewer than two workers: no pod traffic between nodes")]
    added: set[str] = set()
    results: list[CheckResult] = []
    try:
        for o in remote.fan_out(inv, workers, lambda r: gather(r, [probe_setup(gateway(r.node))])
                                [probe_setup(gateway(r.node))], connector=ctx.connector):
            if o.ok and o.value and "added" in o.value:
                added.add(o.node.name)

        def ping(r: Remote) -> list[str]:
            targets = [(w.name, gateway(w)) for w in workers if w.name != r.node.name]
            fact = pings(gateway(r.node), targets)
            return gather(r, [fact], timeout=30)[fact]

        for o in remote.fan_out(inv, workers, ping, connector=ctx.connector):
            if not o.ok or o.value is None:
                results.append(CheckResult(NAME, "ping", o.node.name, FAIL, o.error or "unreachable",
                                           "start the machine / fix SSH"))
                continue
            if o.value == ["no-ping"]:
                results.append(CheckResult(NAME, "ping", o.node.name, SKIP, "skipped: ping is not installed here",
                                           "install iputils-ping to test pod routes end to end"))
                continue
            answers = dict(line.split(" ", 1) for line in o.value if " " in line)
            for w in workers:
                if w.name == o.node.name:
                    continue
                src, dst = gateway(o.node), gateway(w)
                if answers.get(w.name) == "ok":
                    results.append(CheckResult(NAME, "ping", o.node.name, OK,
                                               f"{src} → {dst} ({w.name}'s pod gateway)"))
                else:
                    results.append(CheckResult(NAME, "ping", o.node.name, FAIL,
                                               f"{src} → {dst} ({w.name}'s pod gateway): no reply",
                                               f"a route is missing on {o.node.name} or {w.name} (the reply needs one "
                                               "back), or a firewall drops it; `invoke verify --chapter pod-routes` "
                                               "lists the routes, `invoke pod-routes` adds them"))
    finally:
        if added:
            remote.fan_out(inv, [w for w in workers if w.name in added],
                           lambda r: gather(r, [PROBE_CLEANUP]), connector=ctx.connector)
    return results
