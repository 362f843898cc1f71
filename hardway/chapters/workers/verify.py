"""`verify --chapter workers`: each worker's facts judged (the preflight items again), its files,
containerd on its socket, the CNI config, kubelet and kube-proxy health, known journal signatures,
and the apiserver→kubelet path as the apiserver takes it: from a controller, TLS to each kubelet's
InternalIP:10250 with the apiserver's kubelet client certificate, verifying the kubelet's serving
certificate for that IP.

Gathering is one round trip per node; judging is pure (``judge_worker``, ``judge_kubelet_path``),
tested with recorded facts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from hardway import remote
from hardway.chapters.base import Context
from hardway.chapters.workers import apply as wa
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import node as wn
from hardway.chapters.workers import signatures as sg
from hardway.checks import FAIL, OK, SKIP, CheckResult
from hardway.facts import Fact, FactOutput, file_hashes, file_stats, gather, unit_states
from hardway.files import File, stamps
from hardway.inventory import Inventory, Node
from hardway.paths import CNI_BIN, CNI_CONF, CONTAINERD_CONFIG, K8S_PKI
from hardway.remote import Remote

CHAPTER = "workers"
# What the apiserver presents to kubelets (the control-plane chapter puts them on every controller).
APISERVER_CA = f"{K8S_PKI}/ca.crt"
KUBELET_CLIENT_CERT = f"{K8S_PKI}/apiserver-kubelet-client.crt"
KUBELET_CLIENT_KEY = f"{K8S_PKI}/apiserver-kubelet-client.key"
REPAIR = "re-run `invoke bootstrap-workers`"


# --- facts ------------------------------------------------------------------------------------


def _cni(out: FactOutput) -> tuple[dict[str, str], list[str]]:
    """({conf path: text}, [plugin binaries in /opt/cni/bin])."""
    confs: dict[str, str] = {}
    bins: list[str] = []
    current: str | None = None
    for line in out.stdout.splitlines():
        if line.startswith("@@cni "):
            current = line[6:]
            confs[current] = ""
        elif line == "@@bin":
            current = "@@bin"
        elif current == "@@bin":
            if line.strip():
                bins.append(line.strip())
        elif current is not None:
            confs[current] += line + "\n"
    return confs, bins


CNI: Fact[tuple[dict[str, str], list[str]]] = Fact(
    "cni", f"for f in {CNI_CONF}/*; do [ -f \"$f\" ] && {{ echo \"@@cni $f\"; cat \"$f\"; echo; }}; done; "
           f"echo @@bin; ls -1 {CNI_BIN} 2>/dev/null; true", _cni)


def _text_or_none(out: FactOutput) -> str | None:
    return out.stdout if out.ok else None


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


KUBELET_CONFIG_TEXT: Fact[str | None] = Fact("kubelet_config", f"cat {wf.KUBELET_CONFIG}", _text_or_none)
CONTAINERD_CONFIG_TEXT: Fact[str | None] = Fact("containerd_config", f"cat {CONTAINERD_CONFIG}", _text_or_none)
CRI: Fact[tuple[bool, str]] = Fact(
    "cri_plugin", f"{wf.CTR} --address {wf.CONTAINERD_SOCKET_PATH} --timeout 3s plugins ls | "
                  "awk '$2 == \"cri\" { print $4 }' | grep -x ok", _answer)


@dataclass
class WorkerFacts:
    """What verify reads from one worker."""

    node: wn.NodeFacts = field(default_factory=wn.NodeFacts)
    hashes: dict[str, str | None] = field(default_factory=dict)
    stats: dict[str, tuple[int, str, str, int] | None] = field(default_factory=dict)  # mode, owner, group, ctime
    active: dict[str, str] = field(default_factory=dict)  # unit -> ActiveState
    health: dict[str, tuple[bool, str]] = field(default_factory=dict)  # unit -> (serving, answer)
    cri: tuple[bool, str] = (False, "")
    cni: dict[str, str] = field(default_factory=dict)
    cni_bins: list[str] = field(default_factory=list)
    kubelet_config: str | None = None
    containerd_config: str | None = None
    logs: dict[str, list[sg.Line]] = field(default_factory=dict)


def gather_worker(inv: Inventory, r: Remote, files: list[File]) -> WorkerFacts:
    paths = [f.path for f in files]
    hashes_f, stats_f, states_f = file_hashes(paths, stamps(files)), file_stats(paths), unit_states(wf.UNITS)
    health = wa.health_facts()
    journals = {u: sg.journal(u) for u in wf.UNITS}
    v = gather(r, [*wn.FACTS, hashes_f, stats_f, states_f, *health.values(), CRI, CNI, KUBELET_CONFIG_TEXT,
                   CONTAINERD_CONFIG_TEXT, *journals.values(), sg.COREDNS], timeout=60)
    cni, bins = v[CNI]
    return WorkerFacts(
        node=wn.node_facts_from(v), hashes=v[hashes_f],
        stats={p: (s.mode, s.owner, s.group, s.changed) if s else None for p, s in v[stats_f].items()},
        active={u: s.active for u, s in v[states_f].items()}, health={u: v[f] for u, f in health.items()},
        cri=v[CRI], cni=cni, cni_bins=bins, kubelet_config=v[KUBELET_CONFIG_TEXT],
        containerd_config=v[CONTAINERD_CONFIG_TEXT],
        logs={**{u: v[f] for u, f in journals.items()}, "coredns": v[sg.COREDNS]},
    )


# --- judging one worker -------------------------------------------------------------------------


def _yaml_value(text: str | None, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}:\s*\"?([^\"\n#]+?)\"?\s*$", text or "", re.M)
    return m.group(1) if m else None


def _systemd_cgroup(text: str | None) -> bool | None:
    m = re.search(r"^\s*SystemdCgroup\s*=\s*(true|false)\s*$", text or "", re.M)
    return None if m is None else m.group(1) == "true"


def judge_cni(node: Node, confs: dict[str, str], bins: list[str]) -> list[tuple[str, str, str]]:
    """(status, detail, hint) for the CNI config: valid JSON, every plugin present, the bridge's subnet."""
    out = []
    if not confs:
        return [(FAIL, f"no CNI config in {CNI_CONF}: pods get no network (`cni plugin not initialized`)",
                 f"{REPAIR} to write {wf.CNI_BRIDGE} and {wf.CNI_LOOPBACK}")]
    for path, text in sorted(confs.items()):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            out.append((FAIL, f"{path} is not valid JSON ({exc}): the CRI plugin skips it", REPAIR))
            continue
        plugins = doc.get("plugins", [doc]) if isinstance(doc, dict) else []
        types = [p.get("type") for p in plugins if isinstance(p, dict)]
        types += [p["ipam"]["type"] for p in plugins if isinstance(p, dict) and isinstance(p.get("ipam"), dict)
                  and p["ipam"].get("type")]
        missing = [t for t in types if t not in bins]
        if missing or not types:
            needs = ", ".join(map(str, missing or ["(no type)"]))
            out.append((FAIL, f"{path} needs plugin(s) {needs}, not in {CNI_BIN}",
                        f"{REPAIR} to install the CNI plugins"))
            continue
        if doc.get("type") == "bridge":
            ranges = doc.get("ipam", {}).get("ranges", [[{}]])
            subnets = [r.get("subnet") for rs in ranges for r in rs if isinstance(r, dict)]
            if str(node.pod_cidr) not in subnets:
                out.append((FAIL, f"{path} hands out {', '.join(map(str, subnets)) or 'no subnet'}, not {node.name}'s "
                                  f"pod_cidr {node.pod_cidr}", REPAIR))
                continue
        out.append((OK, f"{path}: valid, plugins {', '.join(dict.fromkeys(types))} present", ""))
    return out


def judge_worker(inv: Inventory, node: Node, f: WorkerFacts, files: list[File]) -> list[CheckResult]:
    """Pure: one worker's facts -> results."""
    n = node.name
    res: list[CheckResult] = []

    def add(check: str, status: str, detail: str, hint: str = "") -> None:
        res.append(CheckResult(CHAPTER, check, n, status, detail, hint))

    for item in wn.judge(node, f.node):
        if item.check != "resolv-conf":
            add(item.check, item.status, item.detail, item.hint)
    # the resolver the kubelet really hands pods: its deployed config's resolvConf, and what that file lists
    used = _yaml_value(f.kubelet_config, "resolvConf")
    texts = {wn.RESOLV_CONF: f.node.resolv_conf, wn.RESOLVED_UPSTREAM: f.node.resolved_upstream}
    choice, why = wn.resolv_conf_choice(f.node)
    if used is None:
        add("resolv-conf", FAIL, f"{wf.KUBELET_CONFIG} is missing or names no resolvConf", REPAIR)
    else:
        servers = wn.nameservers(texts.get(used))
        loop = [s for s in servers if wn.is_loopback(s)] or ([] if servers else ["none"])
        if loop:
            fix = (f"{REPAIR}: it gives this kubelet resolvConf {choice} ({why})" if choice else
                   f"give the node a {wn.RESOLV_CONF} naming its real upstream servers, then {REPAIR}")
            add("resolv-conf", FAIL, f"kubelet resolvConf {used} lists {', '.join(loop)}: pods inherit a loopback "
                                     "resolver and CoreDNS would forward to itself (`plugin/loop: Loop … detected`)",
                fix)
        else:
            add("resolv-conf", OK, f"kubelet resolvConf {used} lists {', '.join(servers[:3])}")
    # files
    bad = False
    for file in files:
        got = f.stats.get(file.path)
        if got is None:
            add("files", FAIL, f"{file.path} is missing", f"{REPAIR} to push it")
            bad = True
        elif got[:3] != (file.mode, file.owner, file.group):
            add("files", FAIL, f"{file.path} is {got[0]:04o} {got[1]}:{got[2]}, want {file.mode:04o} {file.owner}:"
                               f"{file.group}", f"{REPAIR} to fix it")
            bad = True
        elif f.hashes.get(file.path) != file.sha256:
            add("files", FAIL, f"{file.path} differs from what hardway planned", f"{REPAIR} (after `invoke pki` if "
                               "certificates changed)")
            bad = True
    if not bad:
        add("files", OK, f"{len(files)} files present with the planned content and mode")
    # cgroup drivers agree: kubelet, containerd, and systemd as init
    driver, systemd_cgroup = _yaml_value(f.kubelet_config, "cgroupDriver"), _systemd_cgroup(f.containerd_config)
    if driver is not None and systemd_cgroup is not None:
        if (driver == "systemd") != systemd_cgroup:
            add("cgroup-driver", FAIL, f"kubelet cgroupDriver {driver} but containerd SystemdCgroup = "
                                       f"{str(systemd_cgroup).lower()}: pods fail to start (cgroup driver mismatch)",
                f"{REPAIR} to push both configs as rendered (both systemd)")
        else:
            add("cgroup-driver", OK, f"kubelet cgroupDriver {driver}, containerd SystemdCgroup = "
                                     f"{str(systemd_cgroup).lower()}: they agree")
    # services
    ok_c, said_c = f.health.get(wf.CONTAINERD, (False, ""))
    if f.active.get(wf.CONTAINERD) == "active" and ok_c:
        version = re.search(r"Server:\s*\n\s*Version:\s*(\S+)", said_c)
        add("containerd", OK, f"containerd answers on {wf.CONTAINERD_SOCKET_PATH} (ctr version: server "
                              f"{version.group(1) if version else '?'})")
        add("cri-plugin", OK if f.cri[0] else FAIL, "containerd's CRI plugin is loaded" if f.cri[0] else
            f"containerd's CRI plugin did not load: {f.cri[1][-120:] or 'not ok in `ctr plugins ls`'}",
            "" if f.cri[0] else f"`journalctl -u containerd` on {n}; {REPAIR} to push the rendered config")
    else:
        add("containerd", FAIL, f"containerd is {f.active.get(wf.CONTAINERD, 'unknown')}"
                                f"{': ' + said_c.splitlines()[-1][:120] if said_c else ''}",
            f"`journalctl -u containerd` on {n}; {REPAIR}")
    for unit, port in ((wf.KUBELET, wf.KUBELET_HEALTHZ), (wf.KUBE_PROXY, wf.KUBE_PROXY_HEALTHZ)):
        ok, said = f.health.get(unit, (False, ""))
        if f.active.get(unit) == "active" and ok:
            add(unit, OK, f"{wf.label(inv, unit)} /healthz on 127.0.0.1:{port}: {said[:60]}")
        else:
            add(unit, FAIL, f"{wf.label(inv, unit)} is {f.active.get(unit, 'unknown')}, /healthz on :{port}: "
                            f"{said.splitlines()[-1][:100] if said else 'no answer'}",
                f"`journalctl -u {unit}` on {n} (the journal findings below name known causes); {REPAIR}")
    for status, detail, hint in judge_cni(node, f.cni, f.cni_bins):
        add("cni", status, detail, hint)
    cg = f.node.cgroups
    if cg.writable:
        add("containers", OK, f"cgroup v{cg.version} controllers writable: containers can run")
    else:
        add("containers", SKIP, f"skipped: lab: the cgroup v{cg.version} controllers are read-only on this node "
                                "(an nspawn machine on a cgroup v1 host), so no container can run here",
            "checks that need a running pod are skipped here; on real machines they run")
    failing = {r.check for r in res if r.status == FAIL}
    seen = sg.matches(f.logs, {r.check for r in res if r.status == OK} - failing)
    for m in seen:
        add("journal", FAIL, f"{m.signature.cause}: {m.source}: “{m.line.strip()[-140:]}”", m.signature.fix)
    if not seen:
        add("journal", OK, "no known failure signature in containerd, kubelet, kube-proxy or CoreDNS logs")
    return res


# --- the apiserver -> kubelet path, from a controller --------------------------------------------


def _probe(out: FactOutput) -> tuple[int, str]:
    """(curl exit code, what it printed: the HTTP code, or its error)."""
    return out.exit_code, out.stdout.strip()


def kubelet_probe(worker: Node) -> Fact[tuple[int, str]]:
    """What the apiserver does for `kubectl logs/exec`: TLS to the kubelet's InternalIP:10250 with its
    kubelet client certificate, verifying the kubelet's serving certificate for that IP."""
    host = f"[{worker.address}]" if worker.address.version == 6 else str(worker.address)
    return Fact("kubelet_probe", f"curl -sS -o /dev/null -w '%{{http_code}}' --connect-timeout 3 -m 6 "
                                 f"--cacert {APISERVER_CA} --cert {KUBELET_CLIENT_CERT} --key {KUBELET_CLIENT_KEY} "
                                 f"https://{host}:{wf.KUBELET_PORT}/healthz", _probe, (worker.name,))


CLIENT_FILES = file_stats((APISERVER_CA, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY))


def judge_kubelet_path(inv: Inventory, controller: str, worker: Node, probe: tuple[int, str]) -> CheckResult:
    """Pure: one probe's answer -> a result naming cause and fix."""
    code, said = probe
    where = f"{controller} → {worker.address}:{wf.KUBELET_PORT}"

    def res(status: str, detail: str, hint: str = "") -> CheckResult:
        return CheckResult(CHAPTER, "apiserver-to-kubelet", worker.name, status, f"{where}: {detail}", hint)

    http = said[-3:] if code == 0 else ""
    if http == "200":
        return res(OK, f"TLS verified for {worker.address}, client certificate accepted, /healthz 200"
                       f"{' (stand-in kubelet)' if wf.is_standin(inv, wf.KUBELET) else ''}")
    if http == "401":
        return res(FAIL, "HTTP 401: the kubelet does not accept the apiserver's client certificate",
                   "the kubelet's clientCAFile must be the CA that signed apiserver-kubelet-client; run `invoke pki` "
                   "and re-run `invoke bootstrap-workers` and `invoke bootstrap-control-plane`")
    if http == "403":
        return res(FAIL, "HTTP 403 Forbidden (user=kubernetes … nodes/proxy): RBAC lets the apiserver's user no "
                         "further", "run `invoke bootstrap-control-plane` (it applies ClusterRole "
                                    "system:kube-apiserver-to-kubelet bound to user kubernetes)")
    if code == 0:
        return res(FAIL, f"HTTP {http}", f"`journalctl -u kubelet` on {worker.name}")
    error = said.splitlines()[0] if said else f"curl exit {code}"
    if code == 60 and ("subject name" in said or "does not match" in said or "SAN" in said):
        return res(FAIL, f"the kubelet's serving certificate does not carry {worker.address} ({error}): the "
                         "apiserver dials kubelets by InternalIP and refuses it",
                   "run `invoke pki` (kubelet certificates carry the node IP) and re-run `invoke bootstrap-workers`")
    if code == 60:
        return res(FAIL, f"the kubelet's serving certificate does not verify against the cluster CA ({error})",
                   "run `invoke pki` and re-run `invoke bootstrap-workers`")
    if code == 28:
        return res(FAIL, f"no answer within 3 s (`dial tcp {worker.address}:{wf.KUBELET_PORT}: i/o timeout`)",
                   f"let controllers reach {worker.name}:{wf.KUBELET_PORT}/tcp (firewall, routes)")
    if code == 7:
        return res(FAIL, f"connection refused ({error}): no kubelet listens on {wf.KUBELET_PORT}",
                   f"`journalctl -u kubelet` on {worker.name}; re-run `invoke bootstrap-workers`")
    return res(FAIL, f"TLS failed ({error})", f"`journalctl -u kubelet` on {worker.name}; re-run "
                                              "`invoke bootstrap-workers`")


def kubelet_paths(ctx: Context) -> list[CheckResult]:
    """From the first controller that answers: every worker's kubelet, plus the apiserver's journal."""
    inv = ctx.inv
    probes = {w.name: kubelet_probe(w) for w in inv.workers}
    journal = sg.journal("kube-apiserver")

    def ask(r: Remote) -> tuple[dict, list[sg.Line]]:
        v = gather(r, [CLIENT_FILES, *probes.values(), journal], timeout=60)
        if any(s is None for s in v[CLIENT_FILES].values()):
            missing = [p for p, s in v[CLIENT_FILES].items() if s is None]
            return {"missing": missing}, v[journal]
        return {w: v[f] for w, f in probes.items()}, v[journal]

    errors = []
    for c in inv.controllers:
        outcome = remote.fan_out(inv, [c], ask, connector=ctx.connector)[0]
        if not outcome.ok or outcome.value is None:
            errors.append(outcome.error or f"{c.name}: unreachable")
            continue
        answers, lines = outcome.value
        if "missing" in answers:
            return [CheckResult(CHAPTER, "apiserver-to-kubelet", c.name, FAIL,
                                f"{c.name} has no {', '.join(answers['missing'])}: the control plane is not "
                                "bootstrapped, so nothing can reach the kubelets as the apiserver does",
                                "run `invoke bootstrap-control-plane`")]
        res = [judge_kubelet_path(inv, c.name, w, answers[w.name]) for w in inv.workers]
        for m in sg.matches({"kube-apiserver": lines}):
            res.append(CheckResult(CHAPTER, "journal", c.name, FAIL,
                                   f"{m.signature.cause}: kube-apiserver: “{m.line.strip()[-140:]}”", m.signature.fix))
        return res
    return [CheckResult(CHAPTER, "apiserver-to-kubelet", "-", FAIL, f"no controller answered: {errors[0]}",
                        "start the controllers / fix SSH")]


def verify(ctx: Context, chapter) -> list[CheckResult]:
    inv = ctx.inv
    results: list[CheckResult] = []

    def one(r: Remote) -> tuple[WorkerFacts, list[File]]:
        first = gather_worker(inv, r, ctx.files(chapter, r.node))
        files = wa.planned_for(ctx, chapter, r.node, first.node)
        return first, files

    for o in remote.fan_out(inv, inv.workers, one, connector=ctx.connector):
        if not o.ok or o.value is None:
            results.append(CheckResult(CHAPTER, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                       "start the machine / fix SSH"))
            continue
        facts, files = o.value
        results.extend(judge_worker(inv, o.node, facts, files))
    if inv.workers:
        results.extend(kubelet_paths(ctx))
    return results

