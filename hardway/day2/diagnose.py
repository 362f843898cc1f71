"""``invoke diagnose``: the evidence a troubleshooting guide asks for first, from every node at once.

One tarball on the jumpbox (0600, beside the backups: ``diagnose/<cluster>/``) holding, per node:
hardway's unit files and their ``systemctl status``, the last N journal lines of each, the etcd
member list and endpoint status, the expiry and SANs of every certificate hardway put there
(certificates only: no private key, no kubeconfig credential, no encryption config is ever read),
the etcd data dir's size, owner (from its WAL head) and fsync figure, listening ports, routes and
``/etc/resolv.conf``. Plus ``summary.txt``, also printed: which known failure signatures matched
where, each with its cause and fix (the chapters' own signatures, see ``Chapter.signatures``),
and what the figures say (a slow disk, a stale data dir, an expiring certificate).
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hardway import localfs, remote
from hardway.chapters import owner_of
from hardway.chapters.base import Context
from hardway.chapters.etcd import cluster as etcd_cluster
from hardway.chapters.etcd import datadir
from hardway.chapters.etcd.preflight import FSYNC_P99_LIMIT_MS, fsync_p99
from hardway.deploy import RECORD_FACT, Deployed
from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, FactValues, UnitState, gather, unit_states
from hardway.inventory import Node
from hardway.paths import UNIT_DIR
from hardway.signatures import Signature, shorten

CERT_SUFFIXES = (".crt", ".pem")


def _text(out: FactOutput) -> str:
    return out.stdout


def text_fact(name: str, shell: str) -> Fact[str]:
    """One file of the bundle: ``name`` is its path under the node's directory."""
    return Fact(f"diagnose:{name}", shell, _text, (name,))


def cert_command(record: Sequence[str]) -> str:
    """Subject, issuer, expiry and SANs of every certificate in ``record``: the .crt files, and the
    certificate fields of kubeconfigs (grep picks only ``*certificate*-data``: never a key)."""
    parts = []
    for path in sorted(record):
        q = shlex.quote(path)
        fields = "-noout -subject -issuer -enddate -ext subjectAltName -nameopt RFC2253"
        if path.endswith(CERT_SUFFIXES):
            parts.append(f"echo '== {path}'; openssl x509 {fields} -in {q} 2>&1")
        elif path.endswith("kubeconfig"):
            parts.append(f"echo '== {path}'; grep -E '^ *(client-certificate|certificate-authority)-data:' {q} | "
                         "while read -r _ b; do echo \"$b\" | base64 -d | openssl x509 " + fields + " 2>&1; done")
    return "; ".join(parts) or "echo 'no certificates deployed by hardway here'"


def unit_files(record: Sequence[str]) -> list[str]:
    return [p for p in sorted(record) if posixpath.dirname(p) == UNIT_DIR and p.endswith((".service", ".timer"))]


def node_facts(ctx: Context, node: Node, record: dict[str, Deployed], lines: int) -> list[Fact]:
    inv = ctx.inv
    units = [posixpath.basename(p) for p in unit_files(list(record))]
    facts = [text_fact(f"units/{posixpath.basename(p)}", f"cat {shlex.quote(p)}") for p in unit_files(list(record))]
    if units:
        names = " ".join(shlex.quote(u) for u in units)
        facts.append(text_fact("status.txt", f"systemctl status --no-pager --full {names}; true"))
        facts += [text_fact(f"journal/{u.rsplit('.', 1)[0]}.log",
                            f"journalctl -u {shlex.quote(u)} -n {lines} --no-pager -o short-iso") for u in units]
    facts += [text_fact("certs.txt", cert_command(list(record))),
              text_fact("ports.txt", "ss -Htlnp 2>&1; true"),
              text_fact("routes.txt", "ip route 2>&1; echo; ip -6 route 2>&1; true"),
              text_fact("resolv.conf", "cat /etc/resolv.conf 2>&1; true")]
    if node.is_controller:
        q = etcd_cluster.quick_ctl
        eps = ",".join(inv.etcd_client_url(c) for c in inv.controllers)
        facts.append(text_fact("etcd.txt", "echo '== member list'; " + etcd_cluster.guarded(
            q(inv, node, "member list -w table") + "; echo '== endpoint status'; " +
            q(inv, node, "endpoint status -w table", eps) + "; true")))
        d = shlex.quote(inv.etcd.data_dir)
        facts.append(text_fact("disk.txt", f"echo '== {inv.etcd.data_dir}'; du -sb {d} 2>&1; df -h {d} 2>&1; true"))
        facts += [fsync_p99(inv.etcd.data_dir), *etcd_cluster.facts(inv, node)]
    return facts


@dataclass
class NodeEvidence:
    node: Node
    files: dict[str, str] = field(default_factory=dict)
    values: FactValues | None = None
    error: str | None = None
    states: dict[str, UnitState] = field(default_factory=dict)  # hardway's services there


@dataclass
class Match:
    node: str
    where: str  # the unit, or "disk", "data dir", "certificates", "ssh"
    what: str
    cause: str
    fix: str
    seen: str = ""

    def line(self) -> str:
        seen = f"\n    seen: {self.seen}" if self.seen else ""
        return f"{self.node} {self.where}: {self.what}{seen}\n    cause: {self.cause}\n    fix:   {self.fix}"


def _collect(ctx: Context, r: remote.Remote, lines: int) -> NodeEvidence:
    record = gather(r, [RECORD_FACT])[RECORD_FACT]
    facts = node_facts(ctx, r.node, record, lines)
    states = unit_states([p.rsplit("/", 1)[1].rsplit(".", 1)[0] for p in unit_files(list(record))
                          if p.endswith(".service")])
    values = gather(r, [*facts, states], timeout=120)
    ev = NodeEvidence(r.node, values=values)
    ev.states = values[states]
    ev.files["deployed.json"] = _record_text(record)
    for f in facts:
        if f.name.startswith("diagnose:"):
            ev.files[f.args[0]] = values[f]
    if r.node.is_controller:
        p99 = values[fsync_p99(ctx.inv.etcd.data_dir)]
        view = etcd_cluster.view_from(ctx.inv, r.node, values)
        ident = view.data.identity
        ev.files["disk.txt"] += (f"\nfdatasync p99: {p99 if p99 is not None else 'not measured'} ms (etcd wants < "
                                 f"{FSYNC_P99_LIMIT_MS:.0f} ms)\nWAL head: " +
                                 (f"member {ident[0]:x} of cluster {ident[1]:x}" if ident else "no member") + "\n")
    return ev


def _record_text(record: dict[str, Deployed]) -> str:
    return json.dumps({p: e.to_json() for p, e in sorted(record.items())}, indent=1) + "\n"


_STATE_CAUSE = {
    "inactive": "stopped (by hand, or never started since boot)",
    "failed": "it failed: its journal in the bundle says why",
    "activating": "it started but never became ready (etcd: it has not joined a quorum; see the other findings)",
}


def _task_for(unit: str) -> str:
    try:
        return owner_of(unit).task or "verify"
    except HardwayError:
        return "verify"


def signatures_for(unit: str) -> tuple[Signature, ...]:
    name = unit.rsplit(".", 1)[0]
    try:
        return owner_of(name).signatures
    except HardwayError:  # a timer or another unit no chapter runs: no signatures of its own
        return ()


def summarize(ctx: Context, evidence: Sequence[NodeEvidence]) -> list[Match]:
    """Pure over the evidence: every known signature that matched, and what the figures say."""
    inv = ctx.inv
    out: list[Match] = []
    views = {}
    for ev in evidence:
        n = ev.node.name
        if ev.error:
            out.append(Match(n, "ssh", "unreachable", ev.error, "start the machine or fix SSH"))
            continue
        for unit, st in ev.states.items():
            if st.active != "active" and not unit.startswith("hardway-"):  # a oneshot/timer service idles
                out.append(Match(n, unit, f"the service is {st.active}", _STATE_CAUSE.get(
                                     st.active, "it is not running (its journal in the bundle says why)"),
                                 f"`invoke {_task_for(unit)}` starts it again (after fixing what its journal says)"))
        for name, text in sorted(ev.files.items()):
            if not name.startswith("journal/"):
                continue
            unit = name.removeprefix("journal/").removesuffix(".log")
            for sig in signatures_for(unit):
                hits = sig.count(text)
                if hits:
                    out.append(Match(n, unit, f"{sig.name} ({hits} line(s))", sig.cause,
                                     sig.fix.format(node=n, stale=n, data_dir=inv.etcd.data_dir),
                                     shorten(sig.first_line(text) or "")))
        if ev.node.is_controller and ev.values is not None:
            views[n] = etcd_cluster.view_from(inv, ev.node, ev.values)
            p99 = ev.values[fsync_p99(inv.etcd.data_dir)]
            if p99 is not None and p99 >= FSYNC_P99_LIMIT_MS:
                out.append(Match(n, "disk", f"fdatasync p99 {p99:.1f} ms", "the disk is too slow for etcd "
                                 f"(it wants < {FSYNC_P99_LIMIT_MS:.0f} ms): slow commits, lost leaders",
                                 f"put {inv.etcd.data_dir} on an SSD"))
        out += _cert_matches(n, ev.files.get("certs.txt", ""), ctx)
    if views:
        view = etcd_cluster.ClusterView(inv, views)
        stale_names: list[str] = []
        first: list[Match] = []
        for v in view.verdicts().values():
            if v.kind in (datadir.STALE, datadir.UNREADABLE):
                stale_names.append(v.node)
                first.append(Match(v.node, "etcd data dir", v.detail, "a data dir from another cluster or a removed "
                                 "member: its peers log `request cluster ID mismatch` and it never joins",
                                 datadir.stale_fix(inv, inv.node(v.node), bool(view.in_cluster)).removeprefix(
                                     "fix: ")))
        for m in out:  # a mismatch is fixed on the stale member, wherever it is logged
            if m.what.startswith("cluster-id-mismatch") and stale_names:
                m.fix = m.fix.replace(f"etcd.replace {m.node}", f"etcd.replace {stale_names[0]}")
        out = first + out  # what the disks say first: it is the cause the journals echo
    return out


_END = re.compile(r"notAfter=(.+)")


def _cert_matches(node: str, text: str, ctx: Context) -> list[Match]:
    out = []
    current = ""
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:]
        m = _END.search(line)
        if m:
            try:
                end = datetime.strptime(m.group(1).strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
            except ValueError:
                continue
            days = (end - datetime.now(UTC)).days
            if days < ctx.inv.renew_within_days:
                state = "expired" if days < 0 else f"expires in {days} days"
                out.append(Match(node, "certificates", f"{current} {state} ({m.group(1).strip()})",
                                 "TLS to and from this service fails once it expires",
                                 f"`invoke rotate-certs --expiring-within {ctx.inv.renew_within_days}d`"))
    return out


@dataclass
class Bundle:
    path: Path
    matches: list[Match]
    nodes: int
    seconds: float

    def summary_text(self) -> str:
        head = f"hardway diagnose: {self.nodes} node(s), bundle {self.path}"
        if not self.matches:
            return head + "\nno known failure signature matched\n"
        return head + f"\n{len(self.matches)} finding(s):\n" + "\n".join(m.line() for m in self.matches) + "\n"


def out_dir(ctx: Context) -> Path:
    return ctx.state.root.parent / "diagnose" / ctx.inv.cluster_name


def describe(ctx: Context, lines: int = 200, out: Path | None = None) -> str:
    """The dry run: what would be collected where (each node's record is read: one round trip)."""
    inv = ctx.inv

    def plan(r: remote.Remote) -> list[str]:
        record = gather(r, [RECORD_FACT])[RECORD_FACT]
        return [f"       {f.args[0]}: $ {f.shell[:160]}" for f in node_facts(ctx, r.node, record, lines)
                if f.name.startswith("diagnose:")]

    text = [f"diagnose: {len(inv.nodes)} nodes at once, into {out or out_dir(ctx)}/diagnose-{inv.cluster_name}-"
            "<UTC>.tar.gz (0600)"]
    for o in remote.fan_out(inv, inv.nodes, plan, connector=ctx.connector):
        text.append(f"  [{o.node.name}]" + ("" if o.ok else f" unreachable: {o.error}"))
        text += o.value or []
    return "\n".join(text)


def diagnose(ctx: Context, *, lines: int = 200, out: Path | None = None) -> Bundle:
    t0 = time.monotonic()
    inv = ctx.inv
    outcomes = remote.fan_out(inv, inv.nodes, lambda r: _collect(ctx, r, lines), connector=ctx.connector)
    evidence = [o.value if o.ok and o.value is not None else NodeEvidence(o.node, error=o.error) for o in outcomes]
    matches = summarize(ctx, evidence)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    directory = localfs.private_dir(out or out_dir(ctx))
    bundle = Bundle(directory / f"diagnose-{inv.cluster_name}-{stamp}.tar.gz", matches, len(evidence),
                    time.monotonic() - t0)
    root = f"diagnose-{inv.cluster_name}-{stamp}"
    with localfs.write_stream(bundle.path, localfs.SECRET_MODE) as fh, \
            tarfile.open(fileobj=fh, mode="w:gz") as tar:
        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))

        for ev in evidence:
            if ev.error:
                add(f"{ev.node.name}/unreachable.txt", ev.error + "\n")
            for name, text in sorted(ev.files.items()):
                add(f"{ev.node.name}/{name}", text)
        bundle.seconds = time.monotonic() - t0
        add("summary.txt", bundle.summary_text())
    return bundle

