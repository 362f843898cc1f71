"""The control-plane chapter's preflight: judgments on the jumpbox, then facts from each node, judged purely.

Stops before anything is pushed when etcd is not healthy, a binary is missing or built for another
architecture, a unit passes a flag its binary does not know, the apiserver certificate in the PKI
state does not name the endpoint, a port is held by something else, or a load balancer node has no
HAProxy.
"""

from __future__ import annotations

import ipaddress
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

from hardway import flagspec, pki
from hardway.chapters.base import Finding
from hardway.chapters.control_plane import loadbalancer as lb
from hardway.chapters.control_plane.files import (
    APISERVER,
    COMPONENTS,
    KUBECTL,
    PORTS,
    UNIT_PATHS,
    is_standin,
    version,
)
from hardway.chapters.etcd.cluster import health as etcd_health
from hardway.chapters.etcd.preflight import binary_help, elf_arch, unknown_flags
from hardway.checks import FAIL, OK, WARN
from hardway.errors import HardwayError
from hardway.facts import ARCH, Fact, FactOutput, FactValues
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import BIN
from hardway.state import PkiState
from hardway.systemd import exec_words

HAPROXY_MIN = (2, 2)  # runtime `set server ... state`, `log stdout`, `http-check expect`


def _unit_argv(files: list[File], component: str) -> list[str]:
    unit = next(f for f in files if f.path == UNIT_PATHS[component])
    return exec_words(unit.data().decode())


def _binary(files: list[File], name: str) -> File | None:
    return next((f for f in files if f.path == f"{BIN}/{name}"), None)


def _missing(inv: Inventory, name: str) -> str:
    src = inv.binaries.get(name)
    if src is not None and src.path is not None:
        return f"binaries.{name}.path: {src.path} does not exist; fix the path in {inv.path}"
    if src is not None:
        return f"binaries.{name}: {src.url} is not fetched; run `invoke bootstrap-control-plane`, which fetches it"
    return f"binaries.{name} is not in the inventory; add it to {inv.path} under binaries"


def flag_findings(inv: Inventory, component: str, argv: list[str], binary: File) -> list[Finding]:
    """Every flag of the unit known to the binary: asked with --help when it runs here, else the
    pinned version's flag data (hardway/data/kubernetes/<minor>/<component>.yaml)."""
    data_name = f"hardway/data/kubernetes/{flagspec.minor_of(version(inv))}/{component}.yaml"
    arch = elf_arch(binary.source) if binary.source is not None else None
    if binary.source is not None and arch == platform.machine():
        found, helptext = binary_help(binary.source)
        bad = unknown_flags([w.split("=", 1)[0] for w in argv[1:] if w.startswith("--")], helptext)
        if bad:
            return [Finding("-", FAIL, f"the {component} unit passes {flag}, which {binary.source} ({found}) does "
                                       "not accept; use a release that has it or drop the flag") for flag in bad]
        return [Finding("-", OK, f"{component} ({found}): accepts every flag in the unit")]
    try:
        spec = flagspec.load(component, version(inv))
    except HardwayError as exc:
        return [Finding("-", WARN, f"{component}: flags not checked: the binary does not run here and {exc}")]
    where = "its stand-in" if is_standin(inv, component) else f"the {arch} binary (not runnable here)"
    issues = [i for i in spec.check_argv(argv[1:]) if i.fatal]
    if issues:
        return [Finding("-", FAIL, f"the {component} unit: {i.message} ({data_name}); drop or fix the flag, or pin "
                                   "versions.kubernetes to a release that has it") for i in issues]
    return [Finding("-", OK, f"{component}: every flag in the unit is known to v{spec.version} ({data_name}; "
                             f"checked for {where})")]


def san_findings(inv: Inventory, state: PkiState) -> list[Finding]:
    """The apiserver certificate in the PKI state must name every address clients dial."""
    cert = pki.read_cert(state.cert("kube-apiserver"))
    if cert is None:
        return [Finding("-", FAIL, f"{state.cert('kube-apiserver')} is missing or damaged: run `invoke pki`")]
    spec = pki.spec_for(inv, "kube-apiserver")
    have = set(_sans(cert))
    lacking = [f"{kind} {value}" for kind, value in spec.sans if (kind, value) not in have]
    if not lacking:
        return [Finding("-", OK, f"kube-apiserver.crt names the endpoint {inv.api_endpoint.address} and all "
                                 f"{len(spec.sans)} addresses and names clients dial")]
    endpoint = f"IP {inv.api_endpoint.address}"
    why = " (api_endpoint.address)" if endpoint in lacking else ""
    return [Finding("-", FAIL, f"{state.cert('kube-apiserver')} does not name {lacking[0]}{why}"
                               f"{f' and {len(lacking) - 1} more' if len(lacking) > 1 else ''}: clients would fail "
                               "with `x509: certificate is valid for …, not …`; run `invoke rotate-certs` (it "
                               "reissues it and restarts the apiservers one at a time)")]


def _sans(cert: object) -> list[tuple[str, str]]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        return []
    return ([("DNS", d) for d in san.get_values_for_type(x509.DNSName)]
            + [("IP", str(ipaddress.ip_address(i))) for i in san.get_values_for_type(x509.IPAddress)])


def jumpbox_findings(inv: Inventory, state: PkiState, planned: dict[str, list[File]]) -> list[Finding]:
    findings: list[Finding] = []
    if not inv.controllers:
        return findings
    sample = planned[inv.controllers[0].name]
    for name in (*COMPONENTS, KUBECTL):
        f = _binary(sample, name)
        if f is None:
            if name != KUBECTL or name in inv.binaries:  # kubectl on the controllers is optional
                findings.append(Finding("-", FAIL, _missing(inv, name)))
            continue
        if f.source is not None and elf_arch(f.source) is None:
            findings.append(Finding("-", FAIL, f"binaries.{name}: {f.source} is not an ELF binary; point it at the "
                                               "Linux release binary"))
            continue
        if name in COMPONENTS:
            if is_standin(inv, name):
                findings.append(Finding("-", OK, f"{name}: no binary in the inventory: its stand-in runs "
                                                 f"(v{version(inv)}{'-hardway-standin'}, a contract check)"))
            findings += flag_findings(inv, name, _unit_argv(sample, name), f)
    if not is_standin(inv, APISERVER) and shutil.which("kubectl") is None:
        findings.append(Finding("-", FAIL, "no kubectl on this jumpbox: the RBAC step runs it with the admin "
                                           "kubeconfig; install it (`apt-get install kubernetes-client`, or "
                                           "scripts/setup.sh)"))
    findings += san_findings(inv, state)
    return findings


# --- facts -----------------------------------------------------------------------------------


def _owners(out: FactOutput) -> dict[int, tuple[int, str, str]]:
    """port -> (pid, command, systemd unit) of each TCP listener."""
    found: dict[int, tuple[int, str, str]] = {}
    for line in out.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and words[1].isdigit():
            found.setdefault(int(words[0]), (int(words[1]), words[2], words[3] if len(words) > 3 else ""))
    return found


# Who holds each listening port, by the systemd unit its process runs in (/proc/PID/cgroup): HAProxy's
# workers hold the endpoint port for the master, all in the unit's cgroup. One awk for every listener
# (a shell loop spawning sed and grep per line cost ~0.1 s of a controller's CPU on every survey).
LISTENER_UNITS: Fact[dict[int, tuple[int, str, str]]] = Fact(
    "listener_units",
    "ss -Htlnp 2>/dev/null | awk '{ port = $4; sub(/.*:/, \"\", port); pid = 0; cmd = \"?\"; unit = \"\"; "
    "if (match($0, /pid=[0-9]+/)) pid = substr($0, RSTART + 4, RLENGTH - 4); "
    "if (match($0, /users:\\(\\(\"[^\"]*\"/)) cmd = substr($0, RSTART + 9, RLENGTH - 10); "
    "f = \"/proc/\" pid \"/cgroup\"; "
    "while (unit == \"\" && (getline line < f) > 0) "
    "if (match(line, /[^\\/]*\\.service/)) unit = substr(line, RSTART, RLENGTH - 8); "
    "close(f); print port, pid, cmd, unit }'; true",
    _owners)


def _first_line(out: FactOutput) -> str:
    return out.stdout.strip().splitlines()[0] if out.ok and out.stdout.strip() else ""


HAPROXY_VERSION: Fact[str] = Fact("haproxy_version", f"{lb.HAPROXY} -v 2>/dev/null | head -n 1", _first_line)
PYTHON3: Fact[str] = Fact("python3", "command -v python3", _first_line)


def node_facts(inv: Inventory, node: Node, units: Sequence[str]) -> list[Fact]:
    facts: list[Fact] = [ARCH, LISTENER_UNITS]
    if node.is_controller:
        facts.append(etcd_health(inv, node))
    if node.is_loadbalancer:
        facts += [HAPROXY_VERSION, PYTHON3]
    return facts


def _haproxy_version(line: str) -> tuple[int, int] | None:
    words = line.split()
    if len(words) < 3 or words[:2] != ["HAProxy", "version"]:
        return None
    parts = words[2].split(".")
    return (int(parts[0]), int(parts[1])) if len(parts) > 1 and parts[0].isdigit() and parts[1].isdigit() else None


def judge(inv: Inventory, node: Node, facts: FactValues, units: Sequence[str],
          binaries: dict[str, Path]) -> list[Finding]:
    """Pure: one node's facts -> findings (``binaries``: the real binaries pushed there, by name)."""
    out: list[Finding] = []
    name = node.name
    arch = facts[ARCH]
    for binary, path in binaries.items():
        have = elf_arch(path)
        if have and arch and have != arch:
            out.append(Finding(name, FAIL, f"binaries.{binary}: {path} is built for {have} but {name} is {arch}; "
                                           f"point binaries.{binary} at the {arch} release"))
    if node.is_controller:
        healthy, text = facts[etcd_health(inv, node)]
        if not healthy:
            last = (text.splitlines() or ["no answer"])[-1][:160]
            out.append(Finding(name, FAIL, f"etcd is not healthy on {name} ({last}); the apiserver needs it: run "
                                           "`invoke bootstrap-etcd` first"))
    ports = {PORTS[u]: u for u in units if u in PORTS}
    if lb.UNIT in units:
        ports[inv.api_endpoint.port] = lb.UNIT
    for port, (pid, command, unit) in sorted(facts[LISTENER_UNITS].items()):
        if port in ports and unit != ports[port]:
            out.append(Finding(name, FAIL, f"port {port} is held by {pid}/{command}"
                                           f"{f' ({unit}.service)' if unit else ''}, not by our {ports[port]} unit; "
                                           "stop it or free the port"))
    if node.is_loadbalancer:
        line = facts[HAPROXY_VERSION]
        found = _haproxy_version(line)
        if not line:
            out.append(Finding(name, FAIL, f"HAProxy is not installed on {name} ({lb.HAPROXY} missing): run "
                                           "`apt-get install haproxy` there"))
        elif found is not None and found < HAPROXY_MIN:
            out.append(Finding(name, FAIL, f"{line}: hardway needs HAProxy {HAPROXY_MIN[0]}.{HAPROXY_MIN[1]} or "
                                           "newer (runtime API, `log stdout`); upgrade it"))
        else:
            out.append(Finding(name, OK, line))
        if not facts[PYTHON3]:
            out.append(Finding(name, FAIL, f"no python3 on {name}: hardway talks to HAProxy's runtime API with it "
                                           "(to drain an apiserver before a restart); run `apt-get install "
                                           "python3` there"))
    return out
