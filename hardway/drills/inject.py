"""How drills break and mend a lab: commands on a node, certificates that lack a name, an older
cluster's data dir, a slow disk. Each helper does one thing a person could have done by hand.

What a drill moves out of the way goes to the node's stash (``STASH/<drill>``, 0700), never deleted
while the drill is in place; its undo takes it back.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from hardway import localfs, pki, remote
from hardway.chapters.base import Context
from hardway.chapters.etcd.files import ctl
from hardway.errors import HardwayError
from hardway.inventory import Inventory, Node
from hardway.pki.keys import cert_pem, issue, read_cert, read_key
from hardway.remote import Progress
from hardway.state import PkiState

STASH = "/var/lib/hardway/drills"


@dataclass
class Env:
    """What a drill works with: the lab's inventory and PKI, and the lab itself (host-side drills)."""

    inv: Inventory
    state: PkiState
    lab: object | None = None  # hardway.lab.Lab (the slow-disk drill needs the host's side)
    progress: Progress = dataclasses.field(default_factory=lambda: Progress(sink=lambda _line: None))

    def ctx(self, *, fix: bool = False) -> Context:
        c = Context(self.inv, self.state, progress=self.progress)
        c.fix = fix
        return c

    def sh(self, node: Node, command: str, *, check: bool = True, timeout: int = 120) -> str:
        r = remote.connect(self.inv, node)
        try:
            return r.run(command, check=check, timeout=timeout).stdout
        finally:
            r.close()


def stash_dir(drill: str) -> str:
    return f"{STASH}/{drill}"


def stash(drill: str, *paths: str) -> str:
    """Shell: move ``paths`` into the drill's stash on the node (names kept)."""
    d = shlex.quote(stash_dir(drill))
    return f"mkdir -p -m 0700 {d} && " + " && ".join(f"mv -f {shlex.quote(p)} {d}/" for p in paths)


def drop_stash(drill: str) -> str:
    """Shell: remove the drill's stash (once the chapter's apply has put its own files back)."""
    return f"rm -rf -- {shlex.quote(stash_dir(drill))}"


def unstash(drill: str, *paths: str) -> str:
    """Shell: move stashed ``paths`` back where they were (those that are there), then drop the stash dir."""
    d = stash_dir(drill)
    moves = [f"if [ -e {shlex.quote(d + '/' + p.rsplit('/', 1)[1])} ]; then mv -f "
             f"{shlex.quote(d + '/' + p.rsplit('/', 1)[1])} {shlex.quote(p)}; fi" for p in paths]
    return "; ".join([*moves, f"rmdir {shlex.quote(d)} 2>/dev/null; true"])


def leaf_without(state: PkiState, inv: Inventory, name: str,
                 drop: Callable[[str, str], bool]) -> bytes:
    """Certificate ``name`` (PEM) as hardway would issue it, signed by its CA for the key in the PKI state
    (the one its node holds: only the certificate changes), minus the SANs ``drop(kind, value)`` picks."""
    spec = pki.spec_for(inv, name)
    spec = dataclasses.replace(
        spec, dns_names=tuple(d for d in spec.dns_names if not drop("DNS", d)),
        ip_addresses=tuple(i for i in spec.ip_addresses if not drop("IP", str(i))))
    ca_cert, ca_key, key = read_cert(state.cert(spec.issuer)), read_key(state.key(spec.issuer)), read_key(
        state.key(name))
    if ca_cert is None or ca_key is None or key is None:
        raise HardwayError(f"the PKI in {state.root} has no {name} or its CA: run `invoke pki` first")
    cert = issue(spec, key, inv, datetime.datetime.now(datetime.UTC), ca_cert, ca_key)
    return cert_pem(cert)


def write_state_cert(state: PkiState, name: str, pem: bytes) -> None:
    localfs.write_atomic(state.cert(name), pem, 0o644)


def same_ip(a: str, b: object) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(str(b))


def make_stale(env: Env, node: Node, drill: str) -> None:
    """``node``'s data dir becomes a member dir of an OLDER cluster at the same peer URLs (a snapshot
    of this one restored with another cluster token), and etcd starts on it: a member re-added with
    the data dir it had before. Its own member dir goes to the stash."""
    inv = env.inv
    donor = next((c for c in inv.controllers if c.name != node.name), None)
    if donor is None:
        raise HardwayError("this drill needs a second controller to take the older cluster's snapshot from")
    initial = ",".join(f"{c.name}={inv.etcd_peer_url(c)}" for c in inv.controllers)
    snap = f"{stash_dir(drill)}/older.db"
    env.sh(donor, f"mkdir -p -m 0700 {stash_dir(drill)} && {ctl(inv, donor, f'snapshot save {snap}')} >/dev/null")
    chunks: list[bytes] = []
    r = remote.connect(inv, donor)
    try:
        r.fetch(f"cat {snap} && rm -f {snap} && {{ rmdir {stash_dir(drill)} 2>/dev/null; true; }}", chunks.append)
    finally:
        r.close()
    r = remote.connect(inv, node)
    try:
        r.feed(f"mkdir -p -m 0700 {stash_dir(drill)} && cat > {snap}", lambda out: out.write(b"".join(chunks)))
    finally:
        r.close()
    data = shlex.quote(inv.etcd.data_dir)
    older = f"{stash_dir(drill)}/older"
    # restored beside the data dir first: a failed restore leaves etcd running on its own data
    env.sh(node, f"ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore {snap} --name {node.name} "
                 f"--initial-cluster {initial} --initial-cluster-token an-older-cluster "
                 f"--initial-advertise-peer-urls {inv.etcd_peer_url(node)} --data-dir {older} >/dev/null 2>&1 && "
                 "systemctl stop etcd && "
                 f"mv {data}/member {stash_dir(drill)}/member-$(date +%s) && mv {older}/member {data}/member && "
                 f"rm -rf {older} {snap} && systemctl start --no-block etcd")
