"""``invoke etcd.snapshot``: a snapshot of the keyspace from one healthy member, kept on the jumpbox.

The member chosen is a follower when one serves (the leader keeps its disk for commits). Its
``snapshot save`` lands in hardway's 0700 dir on the node, is streamed to the jumpbox into
``backups/<cluster>/`` beside the PKI state (0600, written whole or not at all), checked against
the sha256 the node computed, and described beside it:

    etcd-<cluster>-<UTC time>.db          the snapshot
    etcd-<cluster>-<UTC time>.db.sha256   `sha256sum` format: `sha256sum -c` checks it
    etcd-<cluster>-<UTC time>.db.json     revision, keys (live, at that revision), size, member, release

``snapshot status`` counts every key in the backend (old revisions, members, leases): the live key
count at the snapshot's revision is what a restore is checked against.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hardway import localfs
from hardway.chapters.base import Context
from hardway.chapters.etcd.cluster import ClusterView, MemberView, gather_view, json_answer
from hardway.chapters.etcd.files import ctl
from hardway.day2.common import backup_dir, run_on
from hardway.deploy import HARDWAY_DIR
from hardway.errors import HardwayError
from hardway.facts import FactOutput
from hardway.inventory import Inventory, Node
from hardway.procedure import Procedure

NODE_DIR = f"{HARDWAY_DIR}/snapshots"  # on a controller: 0700, hardway's own


@dataclass
class Snapshot:
    """A snapshot on the jumpbox and what was recorded about it."""

    path: Path
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def sha256_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def summary(self) -> str:
        m = self.meta
        return (f"etcd.snapshot: {self.path} ({m.get('size', 0)} bytes, revision {m.get('revision')}, "
                f"{m.get('keys')} keys, from {m.get('member')}; sha256 {self.sha256[:16]}…)")


def live_keys(inv: Inventory, node: Node, revision: int | None = None) -> str:
    """etcdctl printing the number of keys (at ``revision``) as JSON "count" (works on 3.4, which has no
    --count-only: a range's count is the whole range's even with --limit=1)."""
    rev = f" --rev={revision}" if revision else ""
    return ctl(inv, node, f"get '' --prefix --keys-only --limit=1{rev} -w json", timeout="30s")


def parse_count(text: str) -> int:
    doc = json_answer(FactOutput(text))
    if not isinstance(doc, dict):
        raise HardwayError(f"etcdctl did not report a key count ({text.strip()[-120:]})")
    return int(doc.get("count", 0))


def pick_member(view: ClusterView) -> MemberView:
    serving = view.in_cluster
    if not serving:
        raise HardwayError("no etcd member serves (no quorum), so no snapshot can be taken; start the members "
                           "(`invoke bootstrap-etcd`), or restore an earlier snapshot (`invoke etcd.restore SNAPSHOT`)")
    return next((v for v in serving if v.member_id != view.leader), serving[0])


def plan(ctx: Context, out_dir: Path | None = None, view: ClusterView | None = None) -> tuple[Procedure, Snapshot]:
    inv = ctx.inv
    view = view or gather_view(inv, ctx.connector, data=False)
    chosen = pick_member(view)
    node = chosen.node
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"etcd-{inv.cluster_name}-{stamp}.db"
    out_dir = out_dir or backup_dir(ctx.state, inv)
    snap = Snapshot(out_dir / name)
    on_node = f"{NODE_DIR}/{name}"
    q = shlex.quote(on_node)
    tool = chosen.release.snapshot_tool(node.name)
    # one exec: save, then what the file holds (revision, keys in the backend), the live key count at
    # that revision, and the file's sha256
    save = (f"install -d -m 0700 {NODE_DIR} && umask 077 && "
            f"{ctl(inv, node, f'snapshot save {q}', timeout='300s')} >/dev/null && "
            f"st=$({tool} snapshot status {q} -w json) && echo \"$st\" && "
            "rev=$(echo \"$st\" | sed -n 's/.*\"revision\":\\([0-9]*\\).*/\\1/p') && "
            f"{live_keys(inv, node)} --rev=\"$rev\" && sha256sum {q}")
    proc = Procedure(f"etcd.snapshot of {inv.cluster_name}", ctx.progress)
    role = "a follower" if chosen.member_id != view.leader else "the leader (no follower serves)"
    proc.notes.append(f"from {node.name}, {role}; etcd {chosen.release.dotted}")
    facts: dict = {}
    cleanup = f"rm -f -- {q}"

    def do_save() -> None:
        out = run_on(ctx, node, save, timeout=max(ctx.timeout, 300)).stdout.strip().splitlines()
        docs = [d for d in (json_answer(FactOutput(line)) for line in out) if isinstance(d, dict)]
        st = next((d for d in docs if "totalKey" in d), None)
        if st is None or "revision" not in st or not out or len(out[-1].split()) != 2:
            raise HardwayError(f"{node.name}: `snapshot save` and `snapshot status` gave no revision for {on_node}")
        facts.update(st)
        facts["count"] = parse_count(json.dumps(next((d for d in docs if "header" in d), {})))
        facts["sha256"] = out[-1].split()[0]

    def do_copy() -> None:
        localfs.private_dir(out_dir)
        h = hashlib.sha256()
        r = ctx.connector(inv, node)
        try:
            with localfs.write_stream(snap.path, localfs.SECRET_MODE) as fh:
                def sink(chunk: bytes) -> None:
                    h.update(chunk)
                    fh.write(chunk)

                r.fetch(f"cat {q}", sink, timeout=int(max(ctx.timeout, 300)))
                if h.hexdigest() != facts["sha256"]:
                    raise HardwayError(f"the copy of {on_node} from {node.name} has sha256 {h.hexdigest()[:16]}…, "
                                       f"the node computed {facts['sha256'][:16]}…: the transfer was damaged; "
                                       "run `invoke etcd.snapshot` again")
            r.run(cleanup)  # the node's copy is done with once the jumpbox holds a checked one
        finally:
            r.close()
        snap.sha256 = h.hexdigest()

    def do_record() -> None:
        snap.meta = {"file": name, "sha256": snap.sha256, "revision": int(facts["revision"]),
                     "keys": facts["count"], "backend_keys": facts.get("totalKey"), "size": snap.path.stat().st_size,
                     "hash": facts.get("hash"), "member": node.name, "etcd": chosen.release.dotted,
                     "cluster": inv.cluster_name, "cluster_id": f"{view.cluster_id:x}" if view.cluster_id else None,
                     "taken": stamp}
        localfs.write_atomic(snap.sha256_path, f"{snap.sha256}  {name}\n".encode(), localfs.SECRET_MODE)
        localfs.write_atomic(snap.meta_path, json.dumps(snap.meta, indent=1).encode() + b"\n", localfs.SECRET_MODE)

    def drop_partial() -> None:
        for p in (snap.path, snap.sha256_path, snap.meta_path):
            p.unlink(missing_ok=True)

    proc.add(node.name, "snapshot save (into hardway's 0700 dir on the node), its revision, key count and sha256",
             save, do_save, undo=partial(run_on, ctx, node, cleanup), undo_text=cleanup)
    proc.add("jumpbox", f"copy it to {snap.path} (0600), check the sha256, remove the node's copy",
             f"(ssh {node.name}) cat {q}\n{cleanup}", do_copy, undo=drop_partial, undo_text=f"rm -f {snap.path}*")
    proc.add("jumpbox", f"record {snap.sha256_path.name} and {snap.meta_path.name} beside it", "", do_record)
    return proc, snap


def snapshot(ctx: Context, out_dir: Path | None = None, *, dry_run: bool = False) -> tuple[Procedure, Snapshot]:
    proc, snap = plan(ctx, out_dir)
    if not dry_run:
        proc.run()
    return proc, snap


# --- reading a snapshot back ------------------------------------------------------------------


def load(path: Path) -> Snapshot:
    """A snapshot on the jumpbox, its sha256 checked against the one recorded beside it."""
    path = Path(path)
    snap = Snapshot(path)
    if not path.is_file():
        raise HardwayError(f"{path}: no such snapshot; `invoke etcd.snapshot` writes them to backups/<cluster>/")
    recorded = localfs.read_or_none(snap.sha256_path)
    if recorded is None:
        raise HardwayError(f"{path}: no {snap.sha256_path.name} beside it, so it cannot be checked; if you trust the "
                           f"file, record it: `sha256sum {path} > {snap.sha256_path}`")
    want = recorded.decode(errors="replace").split()[0] if recorded.split() else ""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != want:
        raise HardwayError(f"{path}: sha256 is {h.hexdigest()[:16]}…, but {snap.sha256_path.name} records "
                           f"{want[:16] or 'nothing'}…: the file is damaged or not the one recorded; restore another "
                           "snapshot")
    snap.sha256 = want
    meta = localfs.read_or_none(snap.meta_path)
    if meta is not None:
        try:
            snap.meta = json.loads(meta)
        except ValueError:
            raise HardwayError(f"{snap.meta_path}: not JSON; move it aside, the restore then checks no key "
                               "count") from None
    return snap
