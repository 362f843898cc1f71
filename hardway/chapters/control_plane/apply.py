"""How the control plane comes up, restarts and finishes: readiness waits, restarts behind the load
balancer, and the apiserver->kubelet RBAC.

- Readiness is asked from the jumpbox, over TLS, as a client asks: each apiserver's /readyz with the
  admin certificate, the controller manager's and scheduler's /healthz on their own ports; each poll
  also reads the units' states over SSH, so a unit that failed ends the wait at once with its last
  journal error. No tool is needed on the nodes for it, and nothing is hashed or started there.
- An apiserver is restarted behind the load balancer: drained on every HAProxy (no new connections,
  the running ones finish), restarted, waited for, put back, and waited for until HAProxy's own check
  says UP.
- Once every service is up: the API endpoint's /readyz from the jumpbox, then the RBAC with the
  jumpbox's kubectl and the admin kubeconfig through the endpoint (the tutorial's remote access). A
  stand-in apiserver serves no RBAC API: "skipped: stand-in".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

from hardway import remote, services
from hardway.chapters.base import Context, restart_unit
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane import probes
from hardway.chapters.control_plane.files import (
    APISERVER,
    PORTS,
    is_standin,
    label,
    rbac_yaml,
)
from hardway.errors import HardwayError
from hardway.facts import gather, journal_since_start, unit_states
from hardway.inventory import Node
from hardway.paths import APISERVER_PORT
from hardway.remote import Remote
from hardway.standins import is_standin as says_standin

POLL_S = 0.1
RBAC_OBJECTS = ("clusterrole/system:kube-apiserver-to-kubelet", "clusterrolebinding/system:kube-apiserver")


def ask(ctx: Context, node: Node, unit: str) -> probes.Probe:
    """A component's own health endpoint on ``node``, from here."""
    host = str(node.address)
    if unit == APISERVER:
        return probes.get(host, APISERVER_PORT, "/readyz", ctx.state.cert("ca"),
                          (ctx.state.cert("admin"), ctx.state.key("admin")), check_name=False)
    return probes.get(host, PORTS[unit], "/healthz", None, None)  # self-signed, served to anyone


def _last_error(journal: str) -> str:
    lines = [ln.strip() for ln in journal.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower() or "alert" in ln.lower()]
    return (errors or lines or ["(no journal lines)"])[-1][:220]


def wait_healthy(ctx: Context, nodes: Sequence[Node], units: dict[str, Sequence[str]]) -> None:
    """Poll every given unit on every given node until it answers; fail at once on a failed unit,
    naming its last journal error. Nodes are waited for in parallel: one failing does not stop
    (or stop waiting for) the others, which keep running."""

    def wait(r: Remote) -> None:
        mine = tuple(units[r.node.name])
        t0 = time.monotonic()
        states = unit_states(mine)
        last: dict[str, str] = {}
        while True:
            values = gather(r, [states, *([lb.STAT] if lb.UNIT in mine else [])], timeout=30)
            failed = [u for u in mine if values[states][u].active == "failed"]
            if failed:
                journal = journal_since_start(failed[0])
                why = _last_error(gather(r, [journal])[journal])
                raise HardwayError(f"{r.node.name}: {label(ctx.inv, failed[0])} failed to start: “{why}”; fix it "
                                   "and re-run `invoke bootstrap-control-plane` (nothing else was restarted)")
            pending = []
            for u in mine:
                if u == lb.UNIT:
                    if values[lb.STAT] is None:
                        pending.append(u)
                        last[u] = f"no answer on {lb.SOCKET}"
                    continue
                seen = ask(ctx, r.node, u)
                if not seen.ok:
                    pending.append(u)
                    last[u] = seen.detail
            if not pending:
                ctx.progress(r.node, f"{' '.join(label(ctx.inv, u) for u in mine)} ready after "
                                     f"{time.monotonic() - t0:.1f}s")
                return
            if time.monotonic() - t0 > ctx.timeout:
                waiting = "; ".join(f"{label(ctx.inv, u)}: {last[u][:120]}" for u in pending)
                raise HardwayError(f"{r.node.name}: not ready after {ctx.timeout:.0f}s ({waiting}); run "
                                   "`invoke verify --chapter control-plane` for the cause")
            time.sleep(POLL_S)

    if (error := remote.first_error(remote.fan_out(ctx.inv, nodes, wait, connector=ctx.connector))):
        raise HardwayError(error)


def _on_balancers(ctx: Context, work: Callable[[Remote], object]) -> list[remote.NodeOutcome]:
    outcomes = remote.fan_out(ctx.inv, ctx.inv.loadbalancers, work, connector=ctx.connector)
    if (error := remote.first_error(outcomes)):
        raise HardwayError(error)
    return outcomes


def restart_apiserver(ctx: Context, node: Node) -> None:
    """Restart one apiserver without a failed request through the load balancer (see the module doc)."""
    shown = label(ctx.inv, APISERVER)

    def out(r: Remote) -> bool:
        taken = lb.take_out(r, node.name)
        ctx.progress(r.node, f"{node.name} drained" if taken else f"{lb.UNIT} not running: nothing to drain")
        return taken

    drained = [o.node for o in _on_balancers(ctx, out) if o.value] if ctx.inv.loadbalancers else []
    try:
        restart_unit(ctx, node, APISERVER, shown)
        wait_healthy(ctx, [node], {node.name: [APISERVER]})
    except HardwayError as exc:
        kept = f"; it stays out of rotation on {', '.join(n.name for n in drained)}" if drained else ""
        raise HardwayError(f"{exc}{kept} and the other apiservers keep serving") from None

    def back(r: Remote) -> None:
        if r.node in drained:
            lb.put_back(r, node.name, ctx.timeout)
            ctx.progress(r.node, f"{node.name} back in rotation (UP)")

    if drained:
        _on_balancers(ctx, back)


def reload_balancer(ctx: Context, node: Node) -> None:
    """A changed HAProxy config is reloaded, not restarted: new workers take the listening sockets,
    old ones finish their connections."""
    r = ctx.connector(ctx.inv, node)
    try:
        ctx.progress(node, f"reload {lb.UNIT}")
        services.systemctl(r, "reload", lb.UNIT, timeout=int(ctx.timeout))
    finally:
        r.close()
    wait_healthy(ctx, [node], {node.name: [lb.UNIT]})


# --- finishing: the endpoint, then the RBAC ----------------------------------------------------


def endpoint_probe(ctx: Context, path: str = "/readyz") -> probes.Probe:
    inv, state = ctx.inv, ctx.state
    return probes.get(str(inv.api_endpoint.address), inv.api_endpoint.port, path, state.cert("ca"),
                      (state.cert("admin"), state.key("admin")))


def endpoint_error(ctx: Context, seen: probes.Probe) -> str:
    """One line: what the endpoint did wrong and the fix."""
    ep = probes.host_port(str(ctx.inv.api_endpoint.address), ctx.inv.api_endpoint.port)
    ours = bool(ctx.inv.loadbalancers)
    fixes = {
        probes.REFUSED: (f"nothing listens on the API endpoint {ep}: " + (
            f"{lb.UNIT} is not running on {ctx.inv.loadbalancers[0].name} (`journalctl -u {lb.UNIT}` there)" if ours
            else "start the load balancer there, or set api_endpoint.address to what runs it")),
        probes.NO_TLS: (f"the load balancer at {ep} accepts connections but forwards nowhere: " + (
            "HAProxy sees no ready apiserver (`invoke verify --chapter control-plane` shows each check)" if ours
            else "point its backends at every controller's :6443 (TCP pass-through)")),
        probes.NAME: (f"{seen.detail}: the apiservers serve a certificate without the endpoint's address; run "
                      "`invoke rotate-certs`"),
        probes.UNTRUSTED: f"{seen.detail}: the endpoint is not these apiservers (or terminates TLS itself)",
    }
    return fixes.get(seen.kind, f"the API endpoint {ep} answers {seen.detail}")


def wait_endpoint(ctx: Context) -> probes.Probe:
    """Until /readyz answers through the API endpoint from here; an endpoint not reachable from the
    jumpbox at all is reported, not fatal (the checks say it again)."""
    t0 = time.monotonic()
    while True:
        seen = endpoint_probe(ctx)
        if seen.ok or seen.kind == probes.NO_ROUTE:
            return seen
        if time.monotonic() - t0 > ctx.timeout:
            raise HardwayError(endpoint_error(ctx, seen))
        time.sleep(POLL_S)


def balancers_up(ctx: Context) -> list[str]:
    """Every apiserver UP on every HAProxy; one left drained is reported, not waited for."""
    notes: list[str] = []
    names = [c.name for c in ctx.inv.controllers]

    def up(r: Remote) -> None:
        seen = lb.servers(r) or {}
        held = [n for n in names if n in seen and seen[n].status.startswith(("MAINT", "DRAIN"))]
        for n in held:
            notes.append(f"{n} is drained on {r.node.name}: left out (`systemctl reload {lb.UNIT}` there "
                         "puts every apiserver back)")
        lb.wait_up(r, [n for n in names if n not in held], ctx.timeout)

    _on_balancers(ctx, up)
    return notes


def jumpbox_kubectl() -> str | None:
    return shutil.which("kubectl")


def kubectl(ctx: Context, *args: str, stdin: str | None = None, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    """The jumpbox's kubectl with the admin kubeconfig (through the API endpoint)."""
    found = jumpbox_kubectl()
    if found is None:
        raise HardwayError("no kubectl on this jumpbox: hardway applies the RBAC with it; install it "
                           "(`apt-get install kubernetes-client`, or scripts/setup.sh)")
    try:
        return subprocess.run([found, f"--kubeconfig={ctx.state.kubeconfig('admin')}", "--request-timeout=10s",
                               *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HardwayError(f"`kubectl {' '.join(args)}` did not finish within {timeout}s: is the API endpoint "
                           "answering? (`invoke verify --chapter control-plane`)") from None


def apply_rbac(ctx: Context) -> str:
    """The apiserver->kubelet RBAC with real kubectl and the admin kubeconfig (idempotent: `unchanged`)."""
    if is_standin(ctx.inv, APISERVER):  # installed by the plan; verify asks the running one (/version)
        ctx.progress("jumpbox", "RBAC apiserver→kubelet: skipped: stand-in (it serves no RBAC API)")
        return "apiserver→kubelet RBAC: skipped: stand-in"
    version = kubectl(ctx, "version", "-o", "json")
    try:
        git = json.loads(version.stdout)["serverVersion"]["gitVersion"]
    except (ValueError, KeyError, TypeError):
        detail = (version.stderr.strip() or version.stdout.strip()).splitlines()
        raise HardwayError(f"`kubectl version` through the admin kubeconfig failed: "
                           f"{detail[-1] if detail else version.returncode}") from None
    if says_standin(git):
        return "apiserver→kubelet RBAC: skipped: stand-in"
    out = kubectl(ctx, "apply", "-f", "-", stdin=rbac_yaml(ctx.inv))
    if out.returncode != 0:
        raise HardwayError(f"`kubectl apply` of the apiserver→kubelet RBAC failed: "
                           f"{(out.stderr.strip().splitlines() or ['?'])[-1]}")
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    ctx.progress("jumpbox", "RBAC apiserver→kubelet: " + "; ".join(lines))
    changed = [ln for ln in lines if not ln.endswith("unchanged")]
    return f"apiserver→kubelet RBAC: {'applied' if changed else 'unchanged'} ({git})"


def finish(ctx: Context) -> list[str]:
    notes = balancers_up(ctx) if ctx.inv.loadbalancers else []
    seen = wait_endpoint(ctx)
    where = probes.host_port(str(ctx.inv.api_endpoint.address), ctx.inv.api_endpoint.port)
    if seen.ok:
        notes.append(f"{where} /readyz ok{' (stand-in)' if seen.standin else ''}")
    else:
        notes.append(f"{where} not reachable from the jumpbox: {seen.detail}")
    notes.append(apply_rbac(ctx))
    return notes

