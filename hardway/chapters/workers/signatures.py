"""Journal lines that name a known worker-side failure, mapped to its cause and its fix.

A line counts only if it was logged since the service last started, and while its cause is still
there: a signature whose cause another check proves directly (``cleared_by``: the CNI config, the
sysctls, swap) is history once those checks pass. containerd logs ``cni plugin not initialized``
when /etc/cni/net.d is empty (and again for every file event while the config is rewritten), then
runs fine once it is back: the old lines must not keep failing the check after the repair.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from hardway.facts import Fact, FactOutput
from hardway.paths import CNI_CONF


@dataclass(frozen=True)
class Signature:
    pattern: str
    cause: str
    fix: str
    sources: tuple[str, ...]  # units (or "coredns": the CoreDNS pods' logs on the node)
    cleared_by: tuple[str, ...] = ()  # checks that prove the cause gone when they all pass


SIGNATURES: tuple[Signature, ...] = (
    Signature(r"Missing br-netfilter module|unset sysctl br-nf-call-iptables",
              "br_netfilter is not loaded or net.bridge.bridge-nf-call-iptables is not 1: Services (DNS too) fail "
              "between pods of one node",
              "run `invoke bootstrap-workers --fix`, then `systemctl restart kube-proxy` on the node",
              ("kube-proxy",), ("br-netfilter", "sysctl net.bridge.bridge-nf-call-iptables")),
    Signature(r"plugin/loop: Loop .* detected",
              "CoreDNS forwards to itself: the kubelet's resolvConf lists a loopback stub (127.0.0.53)",
              "re-run `invoke bootstrap-workers` (it gives each kubelet the file listing the real servers), then "
              "`kubectl -n kube-system rollout restart deployment coredns`",
              ("coredns",)),
    Signature(r"cni plugin not initialized|no network config found in",
              f"no valid CNI config in {CNI_CONF} (or its plugins are missing): pods get no network and the node "
              "stays NotReady",
              "re-run `invoke bootstrap-workers` (it writes the bridge and loopback configs and the plugins)",
              ("containerd", "kubelet"), ("cni",)),
    Signature(r"running with swap on is not supported",
              "swap is on: the kubelet refuses to start",
              "run `invoke bootstrap-workers --fix` (swapoff, swap lines of /etc/fstab commented out)",
              ("kubelet",), ("swap",)),
    Signature(r"dial tcp [^ ]+:10250: (i/o timeout|connect: connection refused|connect: no route to host)",
              "the apiserver cannot reach a kubelet on port 10250 (logs, exec, port-forward fail)",
              "let the controllers reach the workers' port 10250/tcp (firewall, routes); "
              "`invoke verify --chapter workers` tests the path from a controller",
              ("kube-apiserver",)),
    Signature(r"Forbidden \(user=kubernetes.*(nodes/proxy|resource=nodes, subresource=proxy)",
              "the kubelet refuses the apiserver: RBAC for user `kubernetes` (the apiserver's kubelet client "
              "certificate's CN) on nodes/proxy is missing",
              "run `invoke bootstrap-control-plane` (it applies ClusterRole system:kube-apiserver-to-kubelet and its "
              "binding); `invoke pki.check` shows the certificate's CN",
              ("kube-apiserver", "kubelet")),
    Signature(r"x509: certificate is valid for .*, not \d",
              "a kubelet's serving certificate lacks its node IP (the apiserver dials kubelets by InternalIP)",
              "run `invoke pki` then `invoke bootstrap-workers` (kubelet certificates carry the node IP)",
              ("kube-apiserver",)),
)

COREDNS_LOGS = "/var/log/pods/kube-system_coredns-*/coredns/*.log"


@dataclass(frozen=True)
class Line:
    at: float  # epoch seconds, the node's clock
    text: str


def _lines(out: FactOutput) -> list[Line]:
    found = []
    for raw in out.stdout.splitlines():
        stamp, _, rest = raw.partition(" ")
        try:
            found.append(Line(float(stamp), rest))
        except ValueError:
            continue
    return found


def journal(unit: str, lines: int = 2000) -> Fact[list[Line]]:
    """The unit's journal since it last started, each line with its time (``-o short-unix``)."""
    q = shlex.quote(unit)
    return Fact("journal_lines", f"s=$(systemctl show --timestamp=unix -p InactiveExitTimestamp --value {q}.service); "
                                 f"case \"$s\" in @*) w=\"--since $s\";; *) w='-n 300';; esac; "
                                 f"journalctl -u {q}.service $w --no-pager -o short-unix | tail -n {lines}",
                _lines, (unit,))


def _pod_lines(out: FactOutput) -> list[Line]:
    """CRI log lines: ``2024-01-01T00:00:00.000000000Z stdout F message``; the time is kept as 0 (the
    file's own age decides nothing here: a loop logged by a running CoreDNS is current)."""
    return [Line(0.0, raw) for raw in out.stdout.splitlines() if raw.strip()]


COREDNS: Fact[list[Line]] = Fact("coredns_logs", f"tail -q -n 200 {COREDNS_LOGS} 2>/dev/null; true", _pod_lines)


@dataclass(frozen=True)
class Match:
    signature: Signature
    source: str
    line: str


def matches(logs: dict[str, list[Line]], passing: set[str] | frozenset[str] = frozenset()) -> list[Match]:
    """Pure: the signatures seen in ``logs`` (source -> lines) whose cause is not proven gone
    (``passing``: the checks that passed on the node)."""
    found = []
    for sig in SIGNATURES:
        if sig.cleared_by and set(sig.cleared_by) <= passing:
            continue
        for source in sig.sources:
            line = next((ln for ln in logs.get(source, []) if re.search(sig.pattern, ln.text)), None)
            if line is not None:
                found.append(Match(sig, source, line.text))
                break
    return found
