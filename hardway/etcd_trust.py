"""Moving etcd to another CA without downtime: etcd's own CA for a cluster that ran on one CA, or a new
etcd CA after ``invoke pki --rotate-ca``. Part of ``rotate-certs``, before its usual push.

etcd members check each other's certificates (peer client-cert auth) and the apiserver checks theirs,
so a member that changed its CA alone would be cut off. The roll therefore trusts both CAs first:

1. every member trusts the old CAs and the new one (a bundle in its CA file); members restart one at
   a time, each healthy and agreeing on the leader before the next: quorum holds, nothing is lost;
2. every apiserver trusts the bundle for etcd's serving certificates and presents its etcd client
   certificate from the new CA (``apiserver-etcd-client``); apiservers restart one at a time behind
   the load balancer;
3. every member gets its certificate from the new CA; members restart one at a time;
4. (the usual rotation push) the CA files hold the new CA alone: the old one is no longer trusted.

Each step acts only where the node is not there yet, so an interrupted roll is resumed by re-running
``rotate-certs``. Only files of chapters hardway deployed on a node are pushed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hardway import deploy, remote
from hardway.chapters import Context, owner_of
from hardway.chapters.control_plane import files as cp_files
from hardway.chapters.etcd import files as etcd_files
from hardway.errors import HardwayError
from hardway.facts import file_hashes, file_stats, file_text, gather
from hardway.files import File
from hardway.inventory import Node
from hardway.pki.catalogue import ETCD_CA_NAME
from hardway.remote import Remote

_BEGIN = "-----BEGIN CERTIFICATE-----"


def split_pems(text: str) -> list[str]:
    """The certificates of a PEM bundle, each normalised to end with one newline."""
    out = []
    for part in text.split(_BEGIN)[1:]:
        body = part.split("-----END CERTIFICATE-----", 1)[0]
        out.append(f"{_BEGIN}{body}-----END CERTIFICATE-----\n")
    return out


TRUSTED = file_text(etcd_files.CA)  # what each member trusts now (a public certificate or bundle)


@dataclass
class Step:
    """One step of the roll: the files each node gets, then its services restarted one at a time."""

    name: str
    files: dict[str, list[File]] = field(default_factory=dict)  # node -> files
    unit: str = ""


@dataclass
class TrustRoll:
    """What the roll will do: empty ``steps`` when etcd already trusts exactly the current etcd CA."""

    new_ca: str
    old_cas: list[str]
    steps: list[Step]

    @property
    def needed(self) -> bool:
        return any(s.files for s in self.steps)

    def describe(self) -> list[str]:
        """One line per step that does something."""
        return [f"{s.name}: {', '.join(sorted(s.files))}; restart {s.unit} one node at a time"
                for s in self.steps if s.files]


def _file(path: str, data: str, service: str, chapter: str) -> File:
    return File(path=path, mode=0o644, content=data.encode(), services=(service,), chapter=chapter)


def plan(ctx: Context) -> TrustRoll:
    """Ask every controller what etcd trusts and what hardway deployed there; decide the steps."""
    inv, state = ctx.inv, ctx.state
    pems = split_pems(state.cert(ETCD_CA_NAME).read_text())
    if not pems:
        raise HardwayError(f"{state.cert(ETCD_CA_NAME)}: holds no certificate; run `invoke pki` to issue the etcd CA")
    new_ca = pems[0]
    etcd_ch, cp_ch = owner_of(etcd_files.UNIT), owner_of(cp_files.APISERVER)
    planned = {c.name: {f.path: f for f in (*ctx.files(etcd_ch, c), *ctx.files(cp_ch, c))} for c in inv.controllers}

    def look(r: Remote) -> tuple[str, dict[str, deploy.Deployed], dict[str, str | None]]:
        paths = list(planned[r.node.name])
        hashes = file_hashes(paths, deploy.stamps(list(planned[r.node.name].values())))
        v = gather(r, [TRUSTED, deploy.RECORD_FACT, hashes])
        return v[TRUSTED] or "", v[deploy.RECORD_FACT], v[hashes]

    outcomes = remote.fan_out(inv, inv.controllers, look, connector=ctx.connector)
    if (error := remote.first_error(outcomes)) is not None:
        raise HardwayError(f"cannot ask the etcd members what they trust: {error}; nothing was pushed")
    seen = {o.node.name: o.value for o in outcomes if o.value is not None}
    members = [c for c in inv.controllers if etcd_files.CA in seen[c.name][1]]
    trusted = {c.name: split_pems(seen[c.name][0]) for c in members}
    old_cas = list(dict.fromkeys(p for c in members for p in trusted[c.name] if p != new_ca))
    if not old_cas:
        return TrustRoll(new_ca, [], [])
    bundle = new_ca + "".join(old_cas)
    both = Step("etcd trusts the old and the new CA", unit=etcd_files.UNIT)
    apiservers = Step("the apiservers trust both for etcd and present the new CA's etcd client",
                      unit=cp_files.APISERVER)
    certs = Step("etcd members present certificates from the new CA", unit=etcd_files.UNIT)
    for c in members:
        name, (_, record, hashes) = c.name, seen[c.name]
        if new_ca not in trusted[name]:
            both.files[name] = [_file(etcd_files.CA, bundle, etcd_files.UNIT, etcd_ch.name)]
        if cp_files.UNIT_PATHS[cp_files.APISERVER] in record:  # the control plane runs there
            want = [_file(cp_files.ETCD_CA, bundle, cp_files.APISERVER, cp_ch.name),
                    *(planned[name][p] for p in (cp_files.ETCD_CLIENT_CERT, cp_files.ETCD_CLIENT_KEY,
                                                 cp_files.UNIT_PATHS[cp_files.APISERVER]))]
            stale = [f for f in want if hashes.get(f.path) != f.sha256]
            if stale:
                apiservers.files[name] = stale
        member_cert = [planned[name][p] for p in (etcd_files.CERT, etcd_files.KEY)]
        if any(hashes.get(f.path) != f.sha256 for f in member_cert):
            certs.files[name] = member_cert
    return TrustRoll(new_ca, old_cas, [both, apiservers, certs])


def _push(ctx: Context, step: Step) -> None:
    def one(r: Remote) -> None:
        files = step.files[r.node.name]
        paths = [f.path for f in files]
        hashes, stats = file_hashes(paths), file_stats(paths)
        v = gather(r, [hashes, stats, deploy.RECORD_FACT])
        push = deploy.plan_push(files, v[hashes], v[stats], v[deploy.RECORD_FACT])
        if push.foreign:
            raise deploy.foreign_error(r.node.name, push.foreign, "invoke rotate-certs")
        reload = ["systemctl daemon-reload"] if any(p.startswith("/etc/systemd/system/") for p in paths) else []
        deploy.push(r, push, then=reload)
        ctx.progress(r.node, f"{step.name}: pushed {len(push.write)} file(s)")

    nodes = [n for n in ctx.inv.controllers if n.name in step.files]
    if (error := remote.first_error(remote.fan_out(ctx.inv, nodes, one, connector=ctx.connector))):
        raise HardwayError(f"{step.name}: push failed on {error}; re-run `invoke rotate-certs`, it resumes")


def roll(ctx: Context, roll: TrustRoll) -> list[tuple[str, str]]:
    """Carry out the steps in order; returns (service, node) of every restart."""
    restarted: list[tuple[str, str]] = []
    for step in roll.steps:
        if not step.files:
            continue
        _push(ctx, step)
        for node in _in_order(ctx.inv.controllers, step.files):
            owner_of(step.unit).restart(ctx, node, step.unit)
            restarted.append((step.unit, node.name))
    return restarted


def _in_order(nodes: Sequence[Node], which: dict[str, list[File]]) -> list[Node]:
    return [n for n in nodes if n.name in which]
