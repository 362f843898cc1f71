"""Whose data is in each controller's etcd data dir: read from the WAL head, judged across nodes.

Every WAL segment starts with a record naming the member and the cluster it belongs to
(``ids.wal_metadata``). Preflight, verify, replace and diagnose all read it the same way, so the
stale member is named by what its disk holds, not guessed from which journal complains.

"This cluster" is, in order: the cluster the serving members report (``endpoint status``), else
the identity hardway's own bootstrap gives it (``ids``: IDs follow from peer URLs and the token),
else the cluster ID most data dirs agree on (after a restore, with its new token, all stopped).

Data is never deleted: ``move_aside`` moves everything etcd put in the data dir (all but
``lost+found``, which a freshly formatted disk holds and etcd accepts) into
``<data_dir>.removed-<timestamp>``, which is itself a usable data dir. The same text is printed as
a fix and run by the day-2 tasks, so what a user pastes is what hardway runs.
"""

from __future__ import annotations

import base64
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hardway.chapters.etcd import ids
from hardway.facts import Fact, FactOutput
from hardway.inventory import Inventory, Node

# lost+found: a fresh filesystem's, etcd starts with it; the probe: a killed fsync measurement's leftover
ACCEPTED = frozenset({"lost+found", ".hardway-fsync-probe"})


def _entries(out: FactOutput) -> list[str]:
    return out.stdout.split()


def entries_fact(data_dir: str) -> Fact[list[str]]:
    return Fact("data_dir_entries", f"ls -A {shlex.quote(data_dir)} 2>/dev/null || true", _entries, (data_dir,))


def _wal(out: FactOutput) -> bytes | None:
    text = out.stdout.strip()
    return base64.b64decode(text) if text else None


def wal_head_fact(data_dir: str) -> Fact[bytes | None]:
    """The first 4 KiB of the member's first WAL segment: its metadata names member and cluster."""
    q = shlex.quote(data_dir)
    return Fact("wal_head", f"f=$(ls {q}/member/wal/*.wal 2>/dev/null | head -n 1); "
                            "if [ -n \"$f\" ]; then head -c 4096 \"$f\" | base64 -w0; fi", _wal, (data_dir,))


def facts(inv: Inventory) -> list[Fact]:
    return [entries_fact(inv.etcd.data_dir), wal_head_fact(inv.etcd.data_dir)]


@dataclass(frozen=True)
class DataDir:
    """What one controller's data dir holds."""

    entries: tuple[str, ...] = ()
    identity: tuple[int, int] | None = None  # (member ID, cluster ID) from the WAL head

    @property
    def has_member(self) -> bool:
        return "member" in self.entries

    @property
    def others(self) -> tuple[str, ...]:
        """Entries that are neither etcd's member dir nor accepted (lost+found)."""
        return tuple(e for e in self.entries if e != "member" and e not in ACCEPTED)

    @property
    def empty(self) -> bool:
        """Nothing etcd would read: a fresh member starts here."""
        return not self.has_member and not self.others


def read(values: Mapping[object, object], inv: Inventory) -> DataDir:
    """The DataDir from a gather's values (FactValues: keyed by the Facts from ``facts``)."""
    entries_f, wal_f = facts(inv)
    entries = tuple(values[entries_f])  # type: ignore[index]
    head = values[wal_f]  # type: ignore[index]
    identity = ids.wal_metadata(head) if "member" in entries and head else None
    return DataDir(entries, identity)


# --- judging across nodes ----------------------------------------------------------------------

OURS, EMPTY, STALE, UNREADABLE, CLUTTERED = "ours", "empty", "stale", "unreadable", "cluttered"
SERVING = "the serving members"


@dataclass(frozen=True)
class Verdict:
    node: str
    kind: str  # OURS / EMPTY / STALE / UNREADABLE / CLUTTERED
    detail: str


@dataclass(frozen=True)
class Reference:
    """What "this cluster" is, and where that was learnt."""

    cluster_id: int
    member_ids: Mapping[str, int]  # peer URL -> the member ID this cluster knows there ({} if unknown)
    source: str  # "the serving members", "hardway's bootstrap identity", "most data dirs", "nothing"


def reference(inv: Inventory, dirs: Mapping[str, DataDir], serving_cluster: int | None,
              serving_members: Mapping[str, int] | None) -> Reference:
    if serving_cluster is not None:
        return Reference(serving_cluster, dict(serving_members or {}), SERVING)
    expected = ids.expected_cluster_id(inv)
    seen = Counter(d.identity[1] for d in dirs.values() if d.identity is not None)
    top, count = seen.most_common(1)[0] if seen else (expected, 0)
    if top != expected and count >= len(inv.controllers) // 2 + 1:  # e.g. all members after a restore
        return Reference(top, {}, "most data dirs")
    return Reference(expected, {inv.etcd_peer_url(n): ids.expected_member_id(inv, n) for n in inv.controllers},
                     "hardway's bootstrap identity")


def judge(inv: Inventory, dirs: Mapping[str, DataDir], ref: Reference) -> dict[str, Verdict]:
    """Pure: each controller's data dir against ``ref``."""
    out: dict[str, Verdict] = {}
    data_dir = inv.etcd.data_dir
    for node in inv.controllers:
        d = dirs.get(node.name)
        if d is None:
            continue
        name = node.name
        if d.has_member and d.identity is None:
            out[name] = Verdict(name, UNREADABLE, f"{data_dir}/member has no readable WAL, so it cannot be "
                                                  "shown to belong to this cluster")
        elif d.has_member:
            member, cluster = d.identity  # type: ignore[misc]
            want_member = ref.member_ids.get(inv.etcd_peer_url(node))
            if cluster != ref.cluster_id:
                out[name] = Verdict(name, STALE, f"{data_dir} holds member {member:x} of cluster {cluster:x}, "
                                                 f"not of this cluster ({ref.cluster_id:x}, per {ref.source}): "
                                                 "a stale or foreign data dir")
            elif ref.source == SERVING and want_member != member:
                listed = f"this cluster lists {want_member:x} there" if want_member else "this cluster no longer " \
                                                                                          "lists it"
                out[name] = Verdict(name, STALE, f"{data_dir} holds member {member:x} of this cluster, but "
                                                 f"{listed}: the member was removed (data left from before)")
            elif want_member != member and member in ref.member_ids.values():
                # without a serving member only bootstrap-made IDs can be judged (a member added later has a
                # random one): another controller's bootstrap ID here is that controller's data
                out[name] = Verdict(name, STALE, f"{data_dir} holds member {member:x}, which hardway's bootstrap "
                                                 "gave to another controller: another member's data dir")
            else:
                out[name] = Verdict(name, OURS, f"{data_dir} holds this cluster's member {member:x}")
        elif d.others:
            out[name] = Verdict(name, CLUTTERED, f"{data_dir} is not empty and holds no etcd member "
                                                 f"({', '.join(d.others[:5])})")
        else:
            shown = " (only lost+found, which etcd accepts)" if d.entries else ""
            out[name] = Verdict(name, EMPTY, f"{data_dir} is empty{shown}")
    return out


def removed_dir(data_dir: str, stamp: str) -> str:
    return f"{data_dir}.removed-{stamp}"


STAMP_SHELL = "$(date +%Y%m%d%H%M%S)"


def move_aside(data_dir: str, stamp: str = STAMP_SHELL) -> str:
    """Shell: move all that etcd would read out of ``data_dir`` into ``<data_dir>.removed-<stamp>``.

    Works when the data dir is a mount point (its entries move, the dir stays) and leaves
    ``lost+found``. With the default stamp the text is what a user pastes on the node.
    """
    q = shlex.quote(data_dir)
    aside = f"{q}.removed-{stamp}"
    return (f"d={aside}; mkdir -m 0700 \"$d\" && "
            f"find {q} -mindepth 1 -maxdepth 1 ! -name lost+found -exec mv -t \"$d\" {{}} +")


def move_back(data_dir: str, stamp: str) -> str:
    """Shell: undo ``move_aside`` with the same stamp (only into an empty data dir)."""
    q, aside = shlex.quote(data_dir), shlex.quote(removed_dir(data_dir, stamp))
    return (f"[ -d {aside} ] && [ -z \"$(ls -A {q} 2>/dev/null | grep -vx lost+found)\" ] && mkdir -p -m 0700 {q} && "
            f"find {aside} -mindepth 1 -maxdepth 1 -exec mv -t {q} {{}} + && rmdir {aside}")


def stale_fix(inv: Inventory, node: Node, cluster_serving: bool) -> str:
    """The fix for a data dir that is not this cluster's, exactly as it is to be run."""
    if cluster_serving:
        return f"fix: `invoke etcd.replace {node.name}` (moves it aside and re-adds the member)"
    return (f"fix: on {node.name}, `systemctl stop etcd; {move_aside(inv.etcd.data_dir)}`, then "
            "`invoke bootstrap-etcd` (hardway never deletes data; it stays in the .removed- dir)")


def summarize(names: Sequence[str]) -> str:
    return ", ".join(names)
