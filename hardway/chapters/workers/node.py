"""A worker's kernel and OS, as the kubelet needs them: facts, a pure judge, and what ``--fix`` does.

Preflight and verify read the same facts and judge them with the same function, so a problem is
named the same way before the push and after. Every item names its cause and its fix; the ones
hardway may repair on request (``invoke bootstrap-workers --fix``) are persisted where the OS
expects them, each file through the deployment record like every file hardway writes:

- swap on: ``swapoff`` each active device; swap lines in /etc/fstab are commented, never deleted
  (the original is kept as /etc/fstab.hardway-orig-<time>, as for any file hardway adopts);
- br_netfilter not loaded: ``modprobe`` and /etc/modules-load.d/hardway-workers.conf;
- bridge-nf-call-iptables or ip_forward not 1: /etc/sysctl.d/99-hardway-workers.conf, then loaded.

The kubelet's resolvConf is not a fix but a choice made per node (``resolv_conf_choice``): the file
that lists the real upstream servers, so CoreDNS never forwards to a loopback stub (itself).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

from hardway.chapters.base import Finding, Step
from hardway.checks import FAIL, OK, WARN
from hardway.facts import Fact, FactOutput, FactValues
from hardway.files import File
from hardway.inventory import Node

CHAPTER = "workers"
FSTAB = "/etc/fstab"
MODULES_FILE = "/etc/modules-load.d/hardway-workers.conf"
SYSCTL_FILE = "/etc/sysctl.d/99-hardway-workers.conf"
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"  # systemd-resolved's list of the real servers
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
IP_FORWARD = "net.ipv4.ip_forward"
SYSCTLS = (BRIDGE_NF, IP_FORWARD)
MODULE = "br_netfilter"
TOOLS = {  # tool -> who needs it, in the words of the failure a user would see
    "socat": "kubectl port-forward (`unable to do port forwarding: socat not found`)",
    "conntrack": "kube-proxy, to flush stale UDP (DNS) flows when Service endpoints change",
    "ipset": "kube-proxy in ipvs mode and network policies",
}
FIX_HINT = "run `invoke bootstrap-workers --fix`"
FIX_MARK = "# hardway (bootstrap-workers --fix): swap off for the kubelet: "

# --- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Swap:
    device: str
    kind: str
    size_kb: int


def _swaps(out: FactOutput) -> list[Swap]:
    found = []
    for line in out.stdout.splitlines()[1:]:  # a header line first
        cols = line.split()
        if len(cols) >= 3 and cols[2].isdigit():
            found.append(Swap(cols[0], cols[1], int(cols[2])))
    return found


def _text(out: FactOutput) -> str:
    return out.stdout


def _text_or_none(out: FactOutput) -> str | None:
    return out.stdout if out.ok else None


def _sysctls(out: FactOutput) -> dict[str, str | None]:
    values: dict[str, str | None] = dict.fromkeys(SYSCTLS)
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in values:
            values[key] = None if value.strip() == "-" else value.strip()
    return values


def _loaded(out: FactOutput) -> bool:
    return out.stdout.strip() == "loaded"


def _tools(out: FactOutput) -> dict[str, bool]:
    found = dict.fromkeys(TOOLS, False)
    for line in out.stdout.splitlines():
        tool, _, there = line.partition(" ")
        if tool in found:
            found[tool] = there.strip() == "yes"
    return found


@dataclass(frozen=True)
class Cgroups:
    fs: str  # cgroup2fs (v2) or tmpfs (v1, possibly hybrid)
    init: str  # PID 1's name
    writable: bool  # containers can get cgroups here (read-only inside an nspawn lab node on a v1 host)

    @property
    def version(self) -> int:
        return 2 if self.fs == "cgroup2fs" else 1


def _cgroups(out: FactOutput) -> Cgroups:
    words = out.stdout.split()
    if len(words) < 3:
        raise ValueError("expected '<fs type> <pid 1> <writable|read-only>'")
    return Cgroups(words[0], words[1], words[2] == "writable")


SWAPS: Fact[list[Swap]] = Fact("swaps", "cat /proc/swaps", _swaps)
FSTAB_TEXT: Fact[str] = Fact("fstab", f"cat {FSTAB} 2>/dev/null; true", _text)
SYSCTL_VALUES: Fact[dict[str, str | None]] = Fact(
    "sysctls", "; ".join(f"printf '%s ' {k}; cat /proc/sys/{k.replace('.', '/')} 2>/dev/null || echo -"
                         for k in SYSCTLS), _sysctls)
# Built into the kernel it has no /sys/module entry; either way its sysctls exist once it is active.
BR_NETFILTER: Fact[bool] = Fact(
    "br_netfilter", f"if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || [ -d /sys/module/{MODULE} ]; "
                    "then echo loaded; else echo missing; fi", _loaded)
RESOLV_TEXT: Fact[str | None] = Fact("resolv_conf", f"cat {RESOLV_CONF}", _text_or_none)
UPSTREAM_TEXT: Fact[str | None] = Fact("resolved_upstream", f"cat {RESOLVED_UPSTREAM}", _text_or_none)
TOOLS_PRESENT: Fact[dict[str, bool]] = Fact(
    "tools", "; ".join(f"if command -v {t} >/dev/null 2>&1; then echo '{t} yes'; else echo '{t} no'; fi"
                       for t in TOOLS), _tools)
CGROUPS: Fact[Cgroups] = Fact(
    "cgroups", "t=$(stat -fc %T /sys/fs/cgroup); "
               "if [ \"$t\" = cgroup2fs ]; then d=/sys/fs/cgroup; else d=/sys/fs/cgroup/cpuset; fi; "
               "if [ -w \"$d\" ]; then w=writable; else w=read-only; fi; echo \"$t $(cat /proc/1/comm) $w\"",
    _cgroups)

FACTS: tuple[Fact, ...] = (SWAPS, FSTAB_TEXT, SYSCTL_VALUES, BR_NETFILTER, RESOLV_TEXT, UPSTREAM_TEXT,
                           TOOLS_PRESENT, CGROUPS)


@dataclass
class NodeFacts:
    """What the judge reads about one worker."""

    swaps: list[Swap] = field(default_factory=list)
    fstab: str = ""
    sysctls: dict[str, str | None] = field(default_factory=lambda: {k: "1" for k in SYSCTLS})
    br_netfilter: bool = True
    resolv_conf: str | None = "nameserver 192.0.2.53\n"
    resolved_upstream: str | None = None
    tools: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(TOOLS, True))
    cgroups: Cgroups = Cgroups("cgroup2fs", "systemd", True)


def node_facts_from(values: FactValues) -> NodeFacts:
    return NodeFacts(values[SWAPS], values[FSTAB_TEXT], values[SYSCTL_VALUES], values[BR_NETFILTER],
                     values[RESOLV_TEXT], values[UPSTREAM_TEXT], values[TOOLS_PRESENT], values[CGROUPS])


# --- the kubelet's resolvConf --------------------------------------------------------------------


def nameservers(text: str | None) -> list[str]:
    out = []
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            out.append(words[1])
    return out


def is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_conf_choice(f: NodeFacts) -> tuple[str | None, str]:
    """(the kubelet's resolvConf for this node, why); None when no file lists real servers.

    Pods with dnsPolicy Default, CoreDNS among them, inherit this file. A loopback server in it
    (systemd-resolved's stub 127.0.0.53, a dnsmasq on 127.0.0.1) is, inside CoreDNS's pod, CoreDNS
    itself: it forwards to itself, detects the loop and crash-loops.
    """
    local = nameservers(f.resolv_conf)
    if local and not any(map(is_loopback, local)):
        return RESOLV_CONF, f"{RESOLV_CONF} lists real servers ({', '.join(local[:3])})"
    upstream = nameservers(f.resolved_upstream)
    said = f"{RESOLV_CONF} lists {', '.join(local[:3]) or 'no nameserver (a resolver then asks 127.0.0.1)'}"
    if upstream and not any(map(is_loopback, upstream)):
        return RESOLVED_UPSTREAM, (f"{said}, a local stub; systemd-resolved's upstream list has "
                                   f"{', '.join(upstream[:3])}")
    return None, said


# --- the judge ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One judged item: ``check`` names it (verify's check column), ``fixable`` by ``--fix``."""

    check: str
    status: str
    detail: str
    hint: str = ""
    fixable: bool = False

    def finding(self, node: str) -> Finding:
        text = self.detail if self.status == OK or not self.hint else f"{self.detail}; {self.hint}"
        return Finding(node, self.status, text)


def active_swap_lines(fstab: str) -> list[str]:
    return [line for line in fstab.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and len(line.split()) >= 3
            and line.split()[2] == "swap"]


def judge(node: Node, f: NodeFacts) -> list[Item]:
    """Pure: one worker's facts -> items (tested with recorded facts)."""
    items: list[Item] = []
    boot_swap = active_swap_lines(f.fstab)
    if f.swaps:
        on = ", ".join(f"{s.device} ({s.size_kb // 1024} MiB)" for s in f.swaps)
        items.append(Item("swap", FAIL, f"swap is on: {on}: the kubelet refuses to start with swap on "
                                        "(`running with swap on is not supported`)",
                          f"{FIX_HINT} (swapoff, and comments the swap lines of {FSTAB} out)", True))
    elif boot_swap:
        items.append(Item("swap", WARN, f"swap is off, but {FSTAB} turns it on at the next boot "
                                        f"({boot_swap[0].split()[0]})",
                          f"{FIX_HINT} (comments the swap lines of {FSTAB} out; the original is kept)", True))
    else:
        items.append(Item("swap", OK, "swap is off (/proc/swaps is empty)"))
    if f.br_netfilter:
        items.append(Item("br-netfilter", OK, f"{MODULE} is loaded"))
    else:
        items.append(Item("br-netfilter", FAIL, f"{MODULE} is not loaded: bridged pod traffic skips iptables, so "
                                                "pods cannot reach Services (DNS) on their own node "
                                                "(`Missing br-netfilter module`)",
                          f"{FIX_HINT} (modprobe {MODULE}; persisted in {MODULES_FILE})", True))
    for key in SYSCTLS:
        value = f.sysctls.get(key)
        if value == "1":
            items.append(Item(f"sysctl {key}", OK, f"{key} = 1"))
            continue
        why = ("bridged pod traffic is not seen by iptables (Services, DNS)" if key == BRIDGE_NF
               else "the node does not forward pod traffic to other nodes")
        seen = f"{key} = {value}" if value is not None else f"{key} does not exist ({MODULE} not loaded)"
        items.append(Item(f"sysctl {key}", FAIL, f"{seen}: {why}",
                          f"{FIX_HINT} (sets it to 1 now and in {SYSCTL_FILE})", True))
    path, why = resolv_conf_choice(f)
    if path is None:
        items.append(Item("resolv-conf", FAIL, f"no file lists real DNS servers for pods: {why}; CoreDNS would "
                                               "forward to itself (`plugin/loop: Loop … detected`)",
                          f"give the node a {RESOLV_CONF} naming its real upstream servers (with systemd-resolved "
                          f"running, {RESOLVED_UPSTREAM} has them), then re-run `invoke bootstrap-workers`"))
    else:
        items.append(Item("resolv-conf", OK, f"kubelet resolvConf {path}: {why}"))
    missing = [t for t, there in f.tools.items() if not there]
    for tool in missing:
        items.append(Item("tools", FAIL, f"{tool} is not installed: needed by {TOOLS[tool]}",
                          f"install it on {node.name} (Debian: apt-get install {' '.join(missing)})"))
    if not missing:
        items.append(Item("tools", OK, f"{', '.join(TOOLS)} installed"))
    cg = f.cgroups
    if cg.init != "systemd":
        items.append(Item("cgroup-driver", FAIL, f"PID 1 is {cg.init}, not systemd: the kubelet's and containerd's "
                                                 "cgroup driver is systemd, which needs systemd as init",
                          "run the node with systemd (hardway's units need it too)"))
    elif cg.version == 1:
        items.append(Item("cgroup-driver", WARN, "cgroup v1 with the systemd driver: works, but Kubernetes 1.31+ "
                                                 "keeps cgroup v1 in maintenance mode and kubelet 1.35 refuses it "
                                                 "by default (failCgroupV1)",
                          "boot the node with the unified hierarchy (systemd.unified_cgroup_hierarchy=1)"))
    else:
        items.append(Item("cgroup-driver", OK, "cgroup v2 and systemd as PID 1: cgroupDriver systemd fits"))
    return items


# --- --fix ------------------------------------------------------------------------------------------


@dataclass
class FixPlan:
    files: list[File] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def commented_fstab(fstab: str) -> str:
    """/etc/fstab with every active swap line commented out (kept, marked), nothing else changed."""
    lines = [f"{FIX_MARK}{line}" if line in active_swap_lines(fstab) else line for line in fstab.splitlines()]
    return "\n".join(lines) + ("\n" if fstab.endswith("\n") or not fstab else "")


def fix_plan(items: list[Item], f: NodeFacts) -> FixPlan:
    """Pure: the files and commands that repair the fixable items (what `--fix` does)."""
    broken = {i.check for i in items if i.fixable and i.status != OK}
    plan = FixPlan()
    if "swap" in broken:
        for s in f.swaps:
            plan.steps.append(Step(f"fixed swap: swapoff {s.device}", f"swapoff -- {shlex.quote(s.device)}"))
        if active_swap_lines(f.fstab):
            plan.files.append(File(FSTAB, 0o644, commented_fstab(f.fstab).encode(), chapter=CHAPTER))
            plan.steps.append(Step(f"fixed {FSTAB}: swap line(s) commented out (original kept as "
                                   f"{FSTAB}.hardway-orig-<time>)", "true"))
    if "br-netfilter" in broken:
        plan.files.append(File(MODULES_FILE, 0o644, b"# Written by hardway (bootstrap-workers --fix): bridged pod "
                                                    b"traffic through iptables.\n" + MODULE.encode() + b"\noverlay\n",
                               chapter=CHAPTER))
        plan.steps.append(Step(f"fixed {MODULE}: loaded, persisted in {MODULES_FILE}", f"modprobe {MODULE}"))
    wrong = [k for k in SYSCTLS if f"sysctl {k}" in broken]
    if wrong:
        body = "".join(f"{k} = 1\n" for k in (*SYSCTLS, "net.bridge.bridge-nf-call-ip6tables"))
        plan.files.append(File(SYSCTL_FILE, 0o644, ("# Written by hardway (bootstrap-workers --fix): pod traffic "
                                                    "through iptables and between nodes.\n" + body).encode(),
                               chapter=CHAPTER))
        plan.steps.append(Step(f"fixed {', '.join(f'{k}=1' for k in wrong)}: set now, persisted in {SYSCTL_FILE}",
                               f"sysctl -q -p {SYSCTL_FILE}"))
    return plan
