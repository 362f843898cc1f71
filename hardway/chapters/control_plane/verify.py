"""The control-plane chapter's checks: facts from every node in one round trip each, TLS probes from
the jumpbox (what a client sees), judged purely.

A stand-in is named in every detail it shows up in; what only a real Kubernetes API could prove (the
RBAC objects) is "skip", never ok.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hardway import deploy, pki, remote
from hardway.chapters.base import Context
from hardway.chapters.control_plane import apply, extras, probes
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane.files import (
    APISERVER,
    CONTROLLER_MANAGER,
    ETCD_CA,
    ETCD_CLIENT_CERT,
    ETCD_CLIENT_KEY,
    SCHEDULER,
    is_standin,
    label,
)
from hardway.checks import FAIL, OK, SKIP, WARN, CheckResult
from hardway.facts import (
    Fact,
    FactOutput,
    FactValues,
    concurrently,
    file_hashes,
    file_stats,
    gather,
    journal_since_start,
    unit_lint,
    unit_states,
)
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import APISERVER_PORT, unit_file
from hardway.remote import Remote
from hardway.signatures import Signature
from hardway.standins import is_standin as says_standin

CHAPTER = "control-plane"
FIX = "`invoke bootstrap-control-plane`"

# Journal lines -> (cause, fix). FAIL while the unit is not healthy, WARN once it is (history since its start).
SIGNATURES: dict[str, tuple[tuple[str, str, str], ...]] = {
    APISERVER: (
        (r"x509: certificate is valid for \S.*, not \S+",
         "a TLS peer's certificate does not name the address dialed (a stale certificate after an address change)",
         "`invoke rotate-certs` reissues certificates for the inventory's addresses and restarts one at a time"),
        (r"serving certificate does not verify|x509: certificate signed by unknown authority",
         "the apiserver does not trust etcd's serving certificate: its --etcd-cafile is not etcd's CA",
         f"{FIX} pushes the etcd CA hardway planned and restarts the apiserver"),
        (r"refused --etcd-certfile|tls: bad certificate|tls: unknown certificate authority",
         "etcd refuses the apiserver's etcd client certificate (etcd trusts another CA)",
         "`invoke rotate-certs` puts etcd and the apiserver on the etcd CA, one member at a time"),
        (r":2379\b.*[Cc]onnection refused|[Cc]onnection refused.*:2379\b",
         "the apiserver cannot reach etcd (connection refused)",
         "`invoke verify --chapter etcd` names the member; `invoke bootstrap-etcd` starts what is stopped"),
        (r"unknown flag: --\S+|has no such flag",
         "the unit passes a flag this kube-apiserver does not know",
         f"re-run {FIX}: its preflight names the flag and the version"),
    ),
    CONTROLLER_MANAGER: (
        (r":6443\b.*[Cc]onnection refused|[Cc]onnection refused.*:6443\b",
         "the apiserver on this node does not answer", "see the kube-apiserver results for this node"),
    ),
    SCHEDULER: (
        (r":6443\b.*[Cc]onnection refused|[Cc]onnection refused.*:6443\b",
         "the apiserver on this node does not answer", "see the kube-apiserver results for this node"),
    ),
    lb.UNIT: (
        (r"cannot bind socket|Address already in use",
         "another process holds the endpoint port", "free it (preflight names the holder)"),
        (r"unable to load SSL|unable to stat SSL|No such file",
         "a file the config names is missing", f"{FIX} pushes it"),
    ),
}
COMMON = (
    (r"\(stand-in\) error: (.*)", "the stand-in refused its contract", f"fix what it names; {FIX} re-renders"),
    (r"no such file or directory", "a file the unit names is missing on the node", f"{FIX} pushes it"),
    (r"address already in use", "another process holds the port", "free it (preflight names the holder)"),
    (r"status=203/EXEC", "systemd could not execute the binary: missing, not executable or another architecture",
     f"{FIX}: preflight checks the binary's architecture and pushes it"),
)


def as_signatures() -> tuple[Signature, ...]:
    """The same signatures for `invoke diagnose` (Chapter.signatures), named after their unit."""
    out = []
    for unit, rows in (*SIGNATURES.items(), ("any", COMMON)):
        for i, (pattern, cause, fix) in enumerate(rows):
            out.append(Signature(f"{unit}-{i}", pattern, cause, fix.replace("{", "{{").replace("}", "}}")))
    return tuple(out)


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


def _etcd_answers(out: FactOutput) -> list[tuple[str, int, str]]:
    """(endpoint, curl's exit code, what it said) per etcd member."""
    found = []
    for line in out.stdout.splitlines():
        url, _, rest = line.partition(" ")
        code, _, said = rest.partition(" ")
        if url.startswith("https://") and code.lstrip("-").isdigit():
            found.append((url, int(code), said.strip()))
    return found


def etcd_client(inv: Inventory) -> Fact[list[tuple[str, int, str]]]:
    """Each etcd member's /health, asked with the apiserver's own etcd client files (those its unit names):
    one answer per member, so a member that is down is told apart from TLS trouble on every one."""
    eps = [inv.etcd_client_url(c) for c in inv.controllers]
    curl = (f"curl -sS --connect-timeout 2 -m 4 --cacert {ETCD_CA} --cert {ETCD_CLIENT_CERT} --key {ETCD_CLIENT_KEY} "
            '"$u/health" 2>&1')
    return Fact("apiserver_etcd_client", f"for u in {' '.join(eps)}; do o=$({curl}); rc=$?; "
                "printf '%s %s %s\\n' \"$u\" \"$rc\" \"$(printf %s \"$o\" | tr '\\n' ' ' | cut -c1-200)\"; done",
                _etcd_answers, tuple(eps))


UNTRUSTED_SERVER, UNREACHABLE = 60, (6, 7, 28)  # curl: the server's certificate did not verify; no connection


def judge_etcd_client(answers: list[tuple[str, int, str]]) -> tuple[str, str, str]:
    """Pure: (status, detail, hint) for the apiserver's etcd client, from each member's answer."""
    ok = [u for u, code, said in answers if code == 0 and '"health":"true"' in said]
    untrusted = [(u, said) for u, code, said in answers if code == UNTRUSTED_SERVER]
    refused = [(u, code, said) for u, code, said in answers
               if u not in ok and code != UNTRUSTED_SERVER and code not in UNREACHABLE]
    down = [u for u, code, _ in answers if code in UNREACHABLE]
    if untrusted:
        u, said = untrusted[0]
        return (FAIL, f"the apiserver's etcd CA file {ETCD_CA} does not verify the serving certificate of {u} "
                      f"({said.split(' More details')[0][:100]}): it is not etcd's CA",
                f"{FIX} pushes the etcd CA hardway planned and restarts the apiserver (after a CA change: "
                "`invoke rotate-certs`)")
    if refused:
        u, code, said = refused[0]
        return (FAIL, f"etcd at {u} refuses the apiserver's etcd client ({ETCD_CLIENT_CERT}): {said[:120] or code}",
                "etcd trusts another CA than the one that signed it: `invoke rotate-certs` puts etcd and the apiserver "
                "on the etcd CA, one member at a time")
    if ok and down:
        return (WARN, f"{len(ok)} of {len(answers)} etcd members accept the apiserver's etcd client; "
                      f"{', '.join(down)} does not answer (that member is down)",
                "`invoke verify --chapter etcd` names the member and its fix")
    if not ok:
        return (FAIL, "no etcd member answers the apiserver's etcd client: "
                      + (answers[0][2][:140] if answers else "no answer"), "`invoke verify --chapter etcd`")
    return (OK, f"every etcd member accepts the apiserver's etcd client ({ETCD_CLIENT_CERT}, etcd CA)", "")


HAPROXY_CHECK: Fact[tuple[bool, str]] = Fact("haproxy_check", f"{lb.HAPROXY} -c -f {lb.CONFIG} 2>&1", _answer)


@dataclass
class NodeFacts:
    states: dict[str, str] = field(default_factory=dict)  # unit -> ActiveState
    hashes: dict[str, str | None] = field(default_factory=dict)
    modes: dict[str, tuple[int, str, str] | None] = field(default_factory=dict)
    lint: str = ""
    journals: dict[str, str] = field(default_factory=dict)
    probes: dict[str, object] = field(default_factory=dict)  # unit -> (ok, text), or the LB's servers
    etcd: list[tuple[str, int, str]] | None = None  # each member's answer to the apiserver's client
    config_check: tuple[bool, str] | None = None


def gather_node(inv: Inventory, r: Remote, units: Sequence[str], files: list[File],
                extra: Sequence[Fact] = (), known: tuple[dict, dict] | None = None) -> tuple[NodeFacts, FactValues]:
    """Everything verify reads from one node in one round trip; the slow probes (curl, etcdctl, sha256
    of the binaries, systemd-analyze) run at the same time there. ``extra``: more slow facts to run
    alongside (their values come back as the second item); ``known``: the hashes and stats an apply's
    survey just read, when nothing was pushed there since."""
    paths = [] if known else [f.path for f in files]
    states, stats = unit_states(units), file_stats(paths)
    hashes = file_hashes(paths, deploy.stamps([f for f in files if f.path in paths]))  # big stamped files: not read
    lint = unit_lint([unit_file(u) for u in units])
    journals = {u: journal_since_start(u) for u in units}
    # the components' health is asked from the jumpbox (a client's view); HAProxy's view of the
    # apiservers here; the apiserver's etcd client once (every controller holds the same files, hashed here)
    asked = {u: lb.STAT for u in units if u == lb.UNIT}
    first = r.node == inv.controllers[0]
    own = [etcd_client(inv)] if first else [HAPROXY_CHECK] if r.node.is_loadbalancer else []
    slow = concurrently("control_plane_probes", list({f.key: f for f in [hashes, lint, *own, *extra]}.values()))
    v = gather(r, [states, stats, *journals.values(), *asked.values(), slow], timeout=60)
    p = FactValues(v[slow])
    disk_hashes, disk_stats = known if known else (p[hashes], v[stats])
    f = NodeFacts({u: s.active for u, s in v[states].items()}, disk_hashes,
                  {path: (st.mode, st.owner, st.group) if st else None for path, st in disk_stats.items()},
                  p[lint], {u: v[j] for u, j in journals.items()}, {u: v[a] for u, a in asked.items()})
    if first:
        f.etcd = p[etcd_client(inv)]
    if r.node.is_loadbalancer:
        f.config_check = p[HAPROXY_CHECK]
    return f, p


def judge_node(inv: Inventory, node: Node, units: Sequence[str], facts: NodeFacts,
               files: list[File]) -> list[CheckResult]:
    """Pure: one node's facts -> results."""
    res: list[CheckResult] = []

    def add(check: str, status: str, detail: str, hint: str = "") -> None:
        res.append(CheckResult(CHAPTER, check, node.name, status, detail, hint))

    for u in units:
        shown = label(inv, u)
        state = facts.states.get(u, "unknown")
        add("unit-active", OK if state == "active" else FAIL, f"{shown} is {state}",
            "" if state == "active" else f"see the journal results below; `journalctl -u {u}` on the node")
        want = next((f for f in files if f.path == unit_file(u)), None)
        got = facts.hashes.get(unit_file(u))
        if want is not None:
            if got is None:
                add("unit-matches-render", FAIL, f"{unit_file(u)} is missing", f"run {FIX}")
            elif got != want.sha256:
                add("unit-matches-render", FAIL, f"{unit_file(u)} differs from the rendered unit (hand-edited?)",
                    f"run {FIX} to push the rendered unit and restart {u}")
            else:
                add("unit-matches-render", OK, f"{unit_file(u)} equals the rendered unit")
    lint = [ln for ln in facts.lint.splitlines() if any(u in ln for u in units)]
    add("unit-lint", FAIL if lint else OK, "systemd says: " + " | ".join(lint[:3]) if lint
        else "systemd-analyze verify: no warnings", f"a broken unit; push the rendered one ({FIX})" if lint else "")
    if facts.config_check is not None:
        ok, text = facts.config_check
        add("haproxy-config", OK if ok else FAIL, f"{lb.HAPROXY} -c -f {lb.CONFIG}: "
            + ("valid" if ok else (text.splitlines() or ["invalid"])[-1][:160]), "" if ok else f"run {FIX}")
    bad_files = 0
    for f in files:
        mode = facts.modes.get(f.path)
        if mode is None:
            add("files", FAIL, f"{f.path} is missing", f"run {FIX} to push it")
        elif mode != (f.mode, f.owner, f.group):
            add("files", FAIL, f"{f.path} is {mode[0]:04o} {mode[1]}:{mode[2]}, want {f.mode:04o} {f.owner}:{f.group}",
                f"run {FIX} to fix it")
        elif facts.hashes.get(f.path) != f.sha256:
            add("files", FAIL, f"{f.path} differs from what hardway planned",
                f"run {FIX} (`invoke rotate-certs` if certificates changed)")
        else:
            continue
        bad_files += 1
    if not bad_files:
        add("files", OK, f"{len(files)} files present with the planned content and mode")
    for u in units:
        if u not in facts.probes:
            continue
        answer = facts.probes[u]
        if u == lb.UNIT:
            res.extend(judge_backends(inv, node, answer))  # type: ignore[arg-type]
            continue
        if u == APISERVER:
            continue  # its /readyz and served certificate are the "readyz" and "served-cert" results
        seen: probes.Probe = answer  # type: ignore[assignment]
        status = OK if seen.ok else WARN if seen.kind == probes.NO_ROUTE else FAIL
        add("health", status, f"{label(inv, u)}: {seen.detail}",
            "" if seen.ok else "see the journal results for this unit")
    if facts.etcd is not None:
        add("etcd-client", *judge_etcd_client(facts.etcd))
    for u in units:
        up = _up(u, facts)
        seen = False
        for pattern, cause, fix in (*SIGNATURES.get(u, ()), *COMMON):
            line = next((ln for ln in facts.journals.get(u, "").splitlines() if re.search(pattern, ln)), None)
            if line is not None:
                seen = True
                add("journal", WARN if up else FAIL, f"{label(inv, u)}: {cause}: “{line.strip()[:140]}”", fix)
                break
        if not seen:
            add("journal", OK, f"{label(inv, u)}: no known failure signature since it last started")
    return res


def _up(unit: str, facts: NodeFacts) -> bool:
    """Healthy, as far as the facts tell (a journal signature of a healthy unit is only a warning)."""
    answer = facts.probes.get(unit)
    if isinstance(answer, probes.Probe):
        return answer.ok
    if unit == lb.UNIT:
        return answer is not None
    return facts.states.get(unit) == "active"


def judge_backends(inv: Inventory, node: Node, seen: dict[str, lb.Server] | None) -> list[CheckResult]:
    if seen is None:
        return [CheckResult(CHAPTER, "backends", node.name, FAIL, f"HAProxy does not answer on {lb.SOCKET}",
                            f"`journalctl -u {lb.UNIT}` on {node.name}; {FIX}")]
    res = []
    for c in inv.controllers:
        s = seen.get(c.name)
        if s is None:
            res.append(CheckResult(CHAPTER, "backends", node.name, FAIL, f"HAProxy has no server {c.name}",
                                   f"its config is not the rendered one: {FIX}"))
        elif s.up:
            res.append(CheckResult(CHAPTER, "backends", node.name, OK, f"{c.name} UP ({s.check})"))
        elif s.status.startswith(("MAINT", "DRAIN")):
            res.append(CheckResult(CHAPTER, "backends", node.name, FAIL, f"{c.name} is out of rotation ({s.status})",
                                   f"an interrupted restart left it out: `systemctl reload {lb.UNIT}` on {node.name} "
                                   "puts every apiserver back"))
        else:
            res.append(CheckResult(CHAPTER, "backends", node.name, FAIL, f"{c.name} {s.status} ({s.check})",
                                   f"its /readyz fails from the load balancer: see the health results of {c.name}"))
    return res


def judge_served(inv: Inventory, node: Node | None, seen: probes.Probe) -> list[CheckResult]:
    """The certificate an apiserver (or the endpoint) really serves must name every address clients dial."""
    where = node.name if node else "endpoint"
    if seen.kind in (probes.REFUSED, probes.NO_ROUTE, probes.NO_TLS):
        status = WARN if seen.kind == probes.NO_ROUTE else FAIL
        return [CheckResult(CHAPTER, "served-cert", where, status, seen.detail,
                            "run verify from a host that reaches port 6443" if status == WARN else "")]
    want = pki.spec_for(inv, "kube-apiserver").sans
    lacking = [f"{k} {v}" for k, v in want if (k, v) not in seen.sans]
    extra = [f"{k} {v}" for k, v in seen.sans if (k, v) not in want]
    if lacking:
        endpoint = f"IP {inv.api_endpoint.address}"
        return [CheckResult(CHAPTER, "served-cert", where, FAIL,
                            f"serves a certificate without {', '.join(lacking[:3])}"
                            + (" (the API endpoint)" if endpoint in lacking else "")
                            + (f" but with {', '.join(extra[:2])}" if extra else ""),
                            "a stale certificate (the endpoint moved?): `invoke rotate-certs` reissues it and "
                            "restarts the apiservers one at a time")]
    if extra:
        return [CheckResult(CHAPTER, "served-cert", where, WARN,
                            f"serves every name it must, and also {', '.join(extra[:3])}, which the inventory no "
                            "longer has", "`invoke rotate-certs` reissues it without them")]
    return [CheckResult(CHAPTER, "served-cert", where, OK, f"the served certificate names all {len(want)} addresses "
                                                           f"and names clients dial, the endpoint "
                                                           f"{inv.api_endpoint.address} included")]


def judge_readyz(where: str, seen: probes.Probe, hint: str) -> CheckResult:
    tag = " (stand-in)" if seen.standin else ""
    if seen.ok:
        return CheckResult(CHAPTER, "readyz", where, OK, f"{seen.detail}{tag}")
    status = WARN if seen.kind == probes.NO_ROUTE else FAIL
    return CheckResult(CHAPTER, "readyz", where, status, f"{seen.detail}{tag}", hint)


def judge_rbac(node: Node, version: str, objects: tuple[bool, str] | None) -> CheckResult:
    """``version``: the gitVersion controller-0's apiserver serves on /version (asked from here);
    ``objects``: what `kubectl get` on the jumpbox answered for the RBAC objects (None: not asked)."""
    if version.startswith("error: "):
        return CheckResult(CHAPTER, "rbac", node.name, FAIL, f"/version: {version[7:][:160]}",
                           "the apiserver does not answer: see the results above")
    if says_standin(version) or objects is None:
        return CheckResult(CHAPTER, "rbac", "-", SKIP, f"skipped: stand-in ({version} serves no RBAC API)")
    ok, text = objects
    if ok:
        return CheckResult(CHAPTER, "rbac", "-", OK, f"{' and '.join(apply.RBAC_OBJECTS)} exist ({version}, "
                                                     "kubectl with the admin kubeconfig)")
    return CheckResult(CHAPTER, "rbac", "-", FAIL, (text.splitlines() or ["kubectl get failed"])[-1][:200],
                       f"the apiserver cannot call kubelets (Forbidden user=kubernetes … nodes/proxy): run {FIX}")


def git_version(seen: probes.Probe) -> str:
    if not seen.ok:
        return f"error: {seen.detail}"
    try:
        return str(json.loads(seen.body)["gitVersion"])
    except (ValueError, KeyError, TypeError):
        return f"error: /version answered {seen.body[:80]!r}"


def verify(ctx: Context, chapter: object) -> list[CheckResult]:
    """Every node's facts (one round trip each) and the jumpbox's TLS probes, all at once."""
    inv, state = ctx.inv, ctx.state
    nodes = (*inv.controllers, *inv.loadbalancers)
    units = {n.name: chapter.node_units(n) for n in nodes}  # type: ignore[attr-defined]
    files = {n.name: ctx.files(chapter, n) for n in nodes}  # type: ignore[arg-type]
    first = inv.controllers[0]

    admin = (state.cert("admin"), state.key("admin"))
    components = [(c, u) for c in inv.controllers for u in (CONTROLLER_MANAGER, SCHEDULER)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        version = pool.submit(probes.get, str(first.address), APISERVER_PORT, "/version", state.cert("ca"), admin,
                              check_name=False)
        health = {(c.name, u): pool.submit(apply.ask, ctx, c, u) for c, u in components}

        def rbac_objects() -> CheckResult:
            served = git_version(version.result())
            if says_standin(served) or served.startswith("error: "):
                return judge_rbac(first, served, None)
            out = apply.kubectl(ctx, "get", *apply.RBAC_OBJECTS, "-o", "name")
            return judge_rbac(first, served, (out.returncode == 0, out.stdout + out.stderr))

        rbac_result = pool.submit(rbac_objects)
        audit = extras.audit_fact(inv)
        gathered = pool.submit(remote.fan_out, inv, nodes, lambda r: gather_node(
            inv, r, units[r.node.name], files[r.node.name], extra=[audit] if r.node.is_controller else [],
            known=ctx.disk.get(r.node.name)), connector=ctx.connector)
        served = {c.name: pool.submit(probes.get, str(c.address), APISERVER_PORT, "/readyz", state.cert("ca"), admin,
                                      check_name=False) for c in inv.controllers}
        through = pool.submit(apply.endpoint_probe, ctx)
        outcomes = gathered.result()
    results: list[CheckResult] = []
    for o in outcomes:
        if not o.ok or o.value is None:
            results.append(CheckResult(CHAPTER, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                       "start the machine / fix SSH"))
            continue
        facts, slow = o.value
        for (name, u), future in health.items():
            if name == o.node.name:
                facts.probes[u] = future.result()
        results.extend(judge_node(inv, o.node, units[o.node.name], facts, files[o.node.name]))
        if o.node.is_controller and APISERVER in units[o.node.name]:
            results.append(extras.judge_audit(inv, o.node, slow[audit], is_standin(inv, APISERVER)))
            results.append(extras.judge_aggregation(inv, o.node, files[o.node.name]))
    for c in inv.controllers:  # what a client sees, from here: the served certificate and /readyz
        seen = served[c.name].result()
        results.extend(judge_served(inv, c, seen))
        results.append(judge_readyz(c.name, seen, f"see the health and journal results of {c.name}"))
    seen = through.result()
    results.extend(judge_served(inv, None, seen))
    results.append(judge_readyz("endpoint", seen, apply.endpoint_error(ctx, seen)))
    return [*results, rbac_result.result()]

