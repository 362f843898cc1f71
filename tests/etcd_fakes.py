"""A fake etcd cluster on top of tests/fakes.py: members, data dirs and etcdctl, answered by fact name.

``FakeEtcd`` keeps what a real cluster keeps — the member list, each data dir's identity (member and
cluster ID, as its WAL head would say), the leader, the keys — and answers the chapter's facts from
it (health, status, member list, data dir entries, WAL head, release) and the commands day-2 tasks
run (member add/remove/promote, move-leader, moving a data dir aside and back, snapshot save/restore,
key counts). A member that starts on an empty data dir becomes the member listed at its peer URL;
the first start of a fresh cluster lists every controller with hardway's bootstrap identity.

It checks the step logic and every refusal without a machine; the lab tests prove the same against
real etcd.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

from hardway.chapters.etcd import ids
from hardway.chapters.etcd.files import UNIT_PATH
from hardway.facts import FactOutput
from hardway.inventory import Inventory
from hardway.remote import CommandResult
from tests.fakes import FakeCluster, FakeNode


def wal_for(member: int, cluster: int) -> bytes:
    """A minimal WAL head: one metadata record, framed as etcd frames it."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    meta = b"\x08" + varint(member) + b"\x10" + varint(cluster)
    record = b"\x08\x01" + b"\x1a" + varint(len(meta)) + meta
    return len(record).to_bytes(8, "little") + record


RELEASES = {  # recorded `etcd --version` outputs (tests/data/etcd-versions/)
    "3.4": "etcd Version: 3.4.23\nGit SHA: Not provided (use ./build instead of go build)\nGo Version: go1.19.8\n"
           "Go OS/Arch: linux/amd64\n",
    "3.5": "etcd Version: 3.5.21\nGit SHA: a17edfd59\nGo Version: go1.23.10\nGo OS/Arch: linux/arm64\n",
    "3.6": "etcd Version: 3.6.1\nGit SHA: a4708be\nGo Version: go1.23.10\nGo OS/Arch: linux/amd64\n",
}


@dataclass
class FakeEtcd:
    inv: Inventory
    cluster: FakeCluster
    release: str = "3.4"
    etcdutl: bool = False
    unhealthy_polls: int = 0
    members: list[dict] = field(default_factory=list)
    cluster_id: int = 0
    data: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # node -> WAL identity
    clutter: dict[str, list[str]] = field(default_factory=dict)  # node -> other entries in the data dir
    aside: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # moved-aside dir -> identity
    leader: int | None = None
    keys: dict[str, str] = field(default_factory=dict)
    revision: int = 1
    journal: dict[str, str] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # nodes whose etcd never becomes healthy
    polls: dict[str, int] = field(default_factory=dict)
    next_id: int = 0xA000
    uploaded: dict[str, str] = field(default_factory=dict)  # "node:path" -> the upload command
    restored: dict[str, tuple[int, int, str, str]] = field(default_factory=dict)  # node -> restored identity
    before: tuple | None = None  # membership before the first swap (a failed restore puts it back)
    tools: list[str] = field(default_factory=list)  # which binary each restore ran

    def __post_init__(self) -> None:
        self.cluster_id = ids.expected_cluster_id(self.inv)
        for c in self.inv.controllers:
            self.data.setdefault(c.name, None)
            self._install(c.name)

    # --- state ------------------------------------------------------------------------------

    def node(self, name: str) -> FakeNode:
        return self.cluster[name]

    def url(self, name: str) -> str:
        return self.inv.etcd_peer_url(self.inv.node(name))

    def member_at(self, name: str) -> dict | None:
        return next((m for m in self.members if self.url(name) in m["peerURLs"]), None)

    def running(self, name: str) -> bool:
        svc = self.node(name).services.get("etcd")
        return svc is not None and svc.active and not svc.failed

    def bootstrap(self, running: bool = True) -> None:
        """A healthy cluster with hardway's bootstrap identity, every member running."""
        self.members = [{"ID": ids.expected_member_id(self.inv, c), "name": c.name,
                         "peerURLs": [self.inv.etcd_peer_url(c)], "clientURLs": [self.inv.etcd_client_url(c)]}
                        for c in self.inv.controllers]
        self.leader = self.members[0]["ID"]
        for c in self.inv.controllers:
            self.data[c.name] = (ids.expected_member_id(self.inv, c), self.cluster_id)
            if running:
                from tests.fakes import FakeService

                self.node(c.name).services["etcd"] = FakeService(True, 1)

    def _settle(self, name: str) -> None:
        """A running member on an empty data dir takes the identity listed at its URL (or bootstraps)."""
        if not self.running(name) or self.data[name] is not None:
            return
        if not self.members:
            self.bootstrap(running=False)
            return
        m = self.member_at(name)
        if m is not None:
            m["name"] = name
            self.data[name] = (m["ID"], self.cluster_id)

    def serving(self, name: str) -> bool:
        self._settle(name)
        if self.data[name] is not None:
            self.node(name).dirs.add(self.inv.etcd.data_dir)  # a member that ran has made its data dir
        m = self.member_at(name)
        if not self.running(name) or name in self.broken or m is None:
            return False
        if self.data[name] != (m["ID"], self.cluster_id):
            return False
        up = [n for n in self.data if self.running(n) and self.member_at(n) is not None and
              self.data[n] == (self.member_at(n)["ID"], self.cluster_id)]
        voters = [m for m in self.members if not m.get("isLearner")]
        return len([n for n in up if not self.member_at(n).get("isLearner")]) >= len(voters) // 2 + 1

    # --- facts ------------------------------------------------------------------------------

    def _install(self, name: str) -> None:
        node = self.node(name)
        c = self.inv.node(name)

        def guarded(answer):
            def fact(f, n: FakeNode) -> FactOutput:
                if not self.running(name):
                    state = "failed" if name in n.services and n.services["etcd"].failed else "inactive"
                    return FactOutput(f"not asked: etcd is {state}", 3)
                return answer()
            return fact

        def health() -> FactOutput:
            if not self.serving(name):
                return FactOutput(f"{self.inv.etcd_client_url(c)} is unhealthy: context deadline exceeded", 1)
            self.polls[name] = self.polls.get(name, 0) + 1
            if self.polls[name] <= self.unhealthy_polls:
                return FactOutput("unhealthy", 1)
            return FactOutput(f"{self.inv.etcd_client_url(c)} is healthy: successfully committed proposal", 0)

        def status() -> FactOutput:
            if not self.serving(name):
                return FactOutput("context deadline exceeded", 1)
            member, cluster = self.data[name]  # type: ignore[misc]
            return FactOutput(json.dumps([{"Endpoint": self.inv.etcd_client_url(c), "Status": {
                "header": {"cluster_id": cluster, "member_id": member, "revision": self.revision},
                "leader": self.leader, "raftIndex": 10, "version": self.release}}]))

        def member_list() -> FactOutput:
            if not self.serving(name):
                return FactOutput("context deadline exceeded", 1)
            return FactOutput(json.dumps({"header": {"cluster_id": self.cluster_id}, "members": self.members}))

        def write() -> FactOutput:
            return FactOutput("OK") if self.serving(name) else FactOutput("context deadline exceeded", 1)

        def entries(f, n: FakeNode) -> FactOutput:
            self._settle(name)
            names = (["member"] if self.data[name] else []) + self.clutter.get(name, [])
            return FactOutput("".join(f"{e}\n" for e in names))

        def wal(f, n: FakeNode) -> FactOutput:
            self._settle(name)
            d = self.data[name]
            return FactOutput(base64.b64encode(wal_for(*d)).decode() if d else "")

        node.facts.update({
            "etcd_health": guarded(health), "etcd_status": guarded(status), "etcd_members": guarded(member_list),
            "etcd_write": guarded(write),
            "etcd_release": lambda f, n: RELEASES[self.release] + ("etcdutl: yes\n" if self.etcdutl else ""),
            "data_dir_entries": entries, "wal_head": wal, "fsync_p99": "1.250",
            "unit_text": lambda f, n: n.files[UNIT_PATH].data.decode() if UNIT_PATH in n.files else "",
            "unit_lint": "", "journal": lambda f, n: self.journal.get(name, ""),
        })
        node.on(r"etcdctl .* member remove ([0-9a-f]+)$", lambda cmd: self._remove(cmd))
        node.on(r"etcdctl .* member add ", lambda cmd: self._add(cmd))
        node.on(r"etcdctl .* member promote ([0-9a-f]+)$", lambda cmd: self._promote(cmd))
        node.on(r"etcdctl .* move-leader ([0-9a-f]+)$", lambda cmd: self._move_leader(cmd))
        node.on(r"\.restoring-\d+/member ", lambda cmd: self._swap(name, cmd))
        node.on(r"^if \[ -d \S+\.removed-\d+ \]; then mkdir -p \S+\.restoring", lambda cmd: self._unswap(name, cmd))
        node.on(r"-exec mv -t \"\$d\" \{\} \+(; fi)?$", lambda cmd: self._move_aside(name, cmd))
        node.on(r"^\[ -d \S+\.removed-\d+ \]", lambda cmd: self._move_back(name, cmd))
        node.on(r"snapshot save (\S+)( >/dev/null && st=.*)?$", lambda cmd: self._save(name, cmd))
        node.on(r"snapshot status (\S+) -w json$", lambda cmd: self._status(name, cmd))
        node.on(r"get '' --prefix --keys-only --limit=1", lambda cmd: self._count(cmd))
        node.on(r"^sha256sum (\S+)$", lambda cmd: self._sha(name, cmd))
        node.on(r"^rm -f -- (\S+)( \S+)?$", lambda cmd: self._rm(name, cmd))
        node.on(r"cat > \S+\.part && ", lambda cmd: self._upload(name, cmd))
        node.on(r"snapshot restore (\S+) --name", lambda cmd: self._restore(name, cmd))

    # --- commands ---------------------------------------------------------------------------

    def _remove(self, cmd: str) -> CommandResult:
        mid = int(re.search(r"member remove ([0-9a-f]+)$", cmd).group(1), 16)  # type: ignore[union-attr]
        before = len(self.members)
        self.members = [m for m in self.members if m["ID"] != mid]
        if len(self.members) == before:
            return CommandResult(cmd, 1, "", f"Error: etcdserver: member not found ({mid:x})")
        return CommandResult(cmd, 0, f"Member {mid:x} removed from cluster {self.cluster_id:x}\n", "")

    def _add(self, cmd: str) -> CommandResult:
        m = re.search(r"member add (\S+) --peer-urls=(\S+)( --learner)?", cmd)
        assert m is not None, cmd
        self.next_id += 1
        member = {"ID": self.next_id, "name": "", "peerURLs": [m.group(2)]}
        if m.group(3):
            member["isLearner"] = True
        self.members.append(member)
        return CommandResult(cmd, 0, json.dumps({"header": {"cluster_id": self.cluster_id}, "member": member,
                                                 "members": self.members}) + "\n", "")

    def _promote(self, cmd: str) -> CommandResult:
        mid = int(re.search(r"member promote ([0-9a-f]+)$", cmd).group(1), 16)  # type: ignore[union-attr]
        m = next((m for m in self.members if m["ID"] == mid), None)
        name = next((n for n in self.data if self.member_at(n) is m), None)
        if m is None or not m.get("isLearner") or name is None or self.data[name] is None:
            return CommandResult(cmd, 1, "", "Error: etcdserver: can only promote a learner member which is in "
                                             "sync with leader")
        m["isLearner"] = False
        return CommandResult(cmd, 0, f"Member {mid:x} promoted in cluster {self.cluster_id:x}\n", "")

    def _move_leader(self, cmd: str) -> CommandResult:
        self.leader = int(re.search(r"move-leader ([0-9a-f]+)$", cmd).group(1), 16)  # type: ignore[union-attr]
        return CommandResult(cmd, 0, "Leadership transferred\n", "")

    def _move_aside(self, name: str, cmd: str) -> CommandResult:
        aside = re.search(r"d=(\S+);", cmd).group(1)  # type: ignore[union-attr]
        if self.data[name] is None and not self.clutter.get(name):
            return CommandResult(cmd, 0, "", "")  # an empty data dir: the `if` skips it
        self.aside[f"{name}:{aside}"] = self.data[name]
        self.data[name] = None
        self.clutter[name] = []
        return CommandResult(cmd, 0, "", "")

    def _move_back(self, name: str, cmd: str) -> CommandResult:
        aside = re.search(r"\[ -d (\S+) \]", cmd).group(1)  # type: ignore[union-attr]
        self.data[name] = self.aside.pop(f"{name}:{aside}")
        return CommandResult(cmd, 0, "", "")


    # --- snapshots and restores ------------------------------------------------------------------

    def _save(self, name: str, cmd: str) -> CommandResult:
        """`snapshot save` alone, or followed (hardway's one exec) by status, key count and sha256."""
        path = re.search(r"snapshot save (\S+)", cmd).group(1)  # type: ignore[union-attr]
        if not self.serving(name):
            return CommandResult(cmd, 1, "", "Error: context deadline exceeded")
        self.node(name).blobs[path] = json.dumps({"revision": self.revision, "keys": self.keys}).encode()
        if "snapshot status" not in cmd:
            return CommandResult(cmd, 0, f"Snapshot saved at {path}\n", "")
        self.tools.append(cmd.split("st=$(")[1].split(" snapshot status")[0])
        out = [self._status(name, f"snapshot status {path} -w json").stdout, self._count(cmd).stdout,
               self._sha(name, f"sha256sum {path}").stdout]
        return CommandResult(cmd, 0, "".join(out), "")

    def _status(self, name: str, cmd: str) -> CommandResult:
        path = re.search(r"snapshot status (\S+) -w json$", cmd).group(1)  # type: ignore[union-attr]
        doc = json.loads(self.node(name).blobs[path])
        return CommandResult(cmd, 0, json.dumps({"hash": 7, "revision": doc["revision"],
                                                 "totalKey": len(doc["keys"]) + 20, "totalSize": 4096}) + "\n", "")

    def _count(self, cmd: str) -> CommandResult:
        return CommandResult(cmd, 0, json.dumps({"header": {"revision": self.revision}, "count": len(self.keys),
                                                 "more": len(self.keys) > 1}) + "\n", "")

    def _sha(self, name: str, cmd: str) -> CommandResult:
        import hashlib

        path = cmd.split()[-1]
        return CommandResult(cmd, 0, f"{hashlib.sha256(self.node(name).blobs[path]).hexdigest()}  {path}\n", "")

    def _rm(self, name: str, cmd: str) -> CommandResult:
        for path in cmd.split()[3:]:
            self.node(name).blobs.pop(path, None)
            self.uploaded.pop(f"{name}:{path}", None)
        return CommandResult(cmd, 0, "", "")

    def _upload(self, name: str, cmd: str) -> CommandResult:
        path = re.search(r"&& mv \S+ (\S+)$", cmd).group(1)  # type: ignore[union-attr]
        self.uploaded[f"{name}:{path}"] = cmd
        return CommandResult(cmd, 0, "", "")

    def _restore(self, name: str, cmd: str) -> CommandResult:
        m = re.search(r"--initial-cluster (\S+) --initial-cluster-token (\S+) .*--data-dir (\S+)$", cmd)
        assert m is not None, cmd
        urls = [pair.split("=", 1)[1] for pair in m.group(1).split(",")]
        mids = {u: ids.member_id([u], m.group(2)) for u in urls}
        self.restored[name] = (mids[self.url(name)], ids.cluster_id(list(mids.values())), m.group(1), m.group(2))
        self.tools.append(cmd.split(" snapshot restore")[0])
        return CommandResult(cmd, 0, "", "")

    def _swap(self, name: str, cmd: str) -> CommandResult:
        member, cluster, initial, token = self.restored.pop(name)
        aside = re.search(r"d=(\S+);", cmd).group(1)  # type: ignore[union-attr]
        self.aside[f"{name}:{aside}"] = self.data[name]
        self.before = self.before or (list(self.members), self.cluster_id, self.leader)
        self.data[name] = (member, cluster)
        pairs = [p.split("=", 1) for p in initial.split(",")]
        self.members = [{"ID": ids.member_id([u], token), "name": n, "peerURLs": [u]} for n, u in pairs]
        self.cluster_id, self.leader = cluster, self.members[0]["ID"]
        return CommandResult(cmd, 0, "", "")

    def _unswap(self, name: str, cmd: str) -> CommandResult:
        aside = re.search(r"\[ -d (\S+) \]", cmd).group(1)  # type: ignore[union-attr]
        if f"{name}:{aside}" in self.aside:
            self.data[name] = self.aside.pop(f"{name}:{aside}")
        if self.before is not None:
            self.members, self.cluster_id, self.leader = self.before
        return CommandResult(cmd, 0, "", "")


def stale(etcd: FakeEtcd, name: str) -> None:
    """``name``'s data dir holds a member of an older cluster (the `request cluster ID mismatch` story)."""
    etcd.data[name] = (0xD622127685879B3C, 0x6656FEB867E68582)
