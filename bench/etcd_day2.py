"""Benchmark: etcd day 2 on a 3-member lab, hardway against the documented by-hand sequence.

    python bench/etcd_day2.py [--rounds N] [--keys 10000]

One lab, bootstrapped once (not timed). Each round writes the keys (not timed), then times, in the
same run and on the same cluster:

- snapshot + restore: hardway as library calls (``day2.snapshot`` + ``day2.restore``) and as the
  CLI (``invoke etcd.snapshot`` + ``invoke etcd.restore``, new processes); the hand way as etcd's
  disaster-recovery page and the tutorials write it: one ssh/scp connection per step, one node
  after another (save, copy to the jumpbox, status; per node: copy, stop, restore, swap the data
  dir; start each without blocking, since a Type=notify member waits for its quorum; poll each
  member's health; count the keys). Every variant ends with all keys back (checked).
- replace one follower: hardway (library and CLI) and the hand way (stop, move the data dir,
  member list/remove/add through another member, edit the unit to --initial-cluster-state=existing,
  start, poll health, edit the unit back).

Prints the medians side by side with the ratios, where hardway's time went, and the machine load
(other work on this 2-core machine shows in the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cli  # noqa: E402
from hardway import jumpbox, lab, remote  # noqa: E402
from hardway.chapters import Context  # noqa: E402
from hardway.chapters.etcd import CHAPTER as ETCD  # noqa: E402
from hardway.chapters.etcd.files import UNIT_PATH, ctl  # noqa: E402
from hardway.day2 import replace, restore, snapshot  # noqa: E402
from hardway.state import PkiState  # noqa: E402
from tests.etcd_client import Client  # noqa: E402

PREFIX = "/bench/day2/"
SETTLE_S = 8.0  # etcd's --strict-reconfig-check wants every member connected for 5 s before a member change


class Hand:
    """The by-hand way: a new ssh/scp connection per step, one node after another."""

    def __init__(self, the_lab: lab.Lab, work: Path) -> None:
        self.inv = the_lab.inventory
        self.work = work
        self.opts = ["-i", str(self.inv.ssh.key), "-o", f"UserKnownHostsFile={self.inv.ssh.known_hosts}",
                     "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

    def ssh(self, node, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *self.opts, f"root@{node.address}", cmd], check=check, capture_output=True,
                              text=True, timeout=120)

    def scp(self, src: str, dst: str) -> None:
        subprocess.run(["scp", "-q", *self.opts, src, dst], check=True, capture_output=True, timeout=120)

    def wait_healthy(self, nodes) -> None:
        for node in nodes:
            for _ in range(240):
                if self.ssh(node, ctl(self.inv, node, "endpoint health"), check=False).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise SystemExit(f"hand way: {node.name} never became healthy")

    def snapshot_restore(self, keys: int) -> float:
        inv, c0 = self.inv, self.inv.controllers[0]
        stamp = str(time.time_ns())
        local = self.work / f"hand-{stamp}.db"
        initial = ",".join(f"{c.name}={inv.etcd_peer_url(c)}" for c in inv.controllers)
        t0 = time.monotonic()
        self.ssh(c0, ctl(inv, c0, "snapshot save /root/hand.db"))
        self.scp(f"root@{c0.address}:/root/hand.db", str(local))
        self.ssh(c0, "ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot status /root/hand.db -w table")
        subprocess.run(["sha256sum", str(local)], check=True, capture_output=True)
        for node in inv.controllers:
            self.scp(str(local), f"root@{node.address}:/root/hand.db")
            self.ssh(node, "systemctl stop etcd")
            self.ssh(node, f"ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore /root/hand.db --name {node.name} "
                           f"--initial-cluster {initial} --initial-cluster-token hand-{stamp} "
                           f"--initial-advertise-peer-urls {inv.etcd_peer_url(node)} --data-dir /var/lib/etcd.hand")
            self.ssh(node, f"mv /var/lib/etcd /var/lib/etcd.old-{stamp} && mv /var/lib/etcd.hand /var/lib/etcd")
        for node in inv.controllers:
            self.ssh(node, "systemctl start --no-block etcd")
        self.wait_healthy(inv.controllers)
        got = self.ssh(c0, ctl(inv, c0, f"get {PREFIX} --prefix --keys-only --limit=1 -w json")).stdout
        took = time.monotonic() - t0
        assert json.loads(got)["count"] == keys, "hand way: keys lost"
        return took

    def replace(self, node) -> float:
        inv = self.inv
        other = next(c for c in inv.controllers if c.name != node.name)
        stamp = str(time.time_ns())
        t0 = time.monotonic()
        self.ssh(node, "systemctl stop etcd")
        self.ssh(node, f"mv /var/lib/etcd /var/lib/etcd.old-{stamp}")
        listed = json.loads(self.ssh(other, ctl(inv, other, "member list -w json")).stdout)["members"]
        old = next(m for m in listed if inv.etcd_peer_url(node) in m["peerURLs"])
        self.ssh(other, ctl(inv, other, f"member remove {int(old['ID']):x}"))
        self.ssh(other, ctl(inv, other, f"member add {node.name} --peer-urls={inv.etcd_peer_url(node)}"))
        self.ssh(node, f"sed -i 's/--initial-cluster-state=new/--initial-cluster-state=existing/' {UNIT_PATH} && "
                       "systemctl daemon-reload")
        self.ssh(node, "systemctl start --no-block etcd")
        self.wait_healthy([node])
        self.ssh(node, f"sed -i 's/--initial-cluster-state=existing/--initial-cluster-state=new/' {UNIT_PATH} && "
                       "systemctl daemon-reload")
        return time.monotonic() - t0



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    load_before = os.getloadavg()
    name = f"bd{os.getpid() % 10000}"
    the_lab = lab.up(name, 3, 0, str(lab.free_subnet(hash(name) & 0xFFFF)), report=lambda _m: None)
    rows: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}
    replace_steps: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            state = PkiState(work / "pki" / the_lab.inventory.cluster_name)
            jumpbox.generate(the_lab.inventory, state)
            with remote.Pool() as pool:
                ETCD.apply(Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET))
            inv = the_lab.inventory
            client = Client(inv, state, work / "client")
            items = {f"{PREFIX}{i:06d}": f"value-{i}" for i in range(args.keys)}
            hand = Hand(the_lab, work)
            for r in range(args.rounds):
                for variant in ("library", "cli", "hand"):
                    client.run(inv.controllers, "del", PREFIX, "--prefix")
                    client.put_many(inv.controllers, items)
                    if variant == "library":
                        with remote.Pool() as pool:
                            ctx = Context(inv, state, connector=pool, progress=remote.QUIET)
                            t0 = time.monotonic()
                            proc, snap = snapshot.snapshot(ctx)
                            rproc, _, _ = restore.restore(ctx, snap.path)
                            add("sr-library", time.monotonic() - t0)
                        for s in proc.steps + rproc.steps:
                            steps.setdefault(" ".join(s.what.split(" (")[0].split(":")[0].split()[:4]), []).append(
                                s.seconds)
                    elif variant == "cli":
                        t_snap, out = cli(the_lab, state, "etcd.snapshot")
                        path = out.split("etcd.snapshot: ", 1)[1].split(" (", 1)[0]
                        t_restore, _ = cli(the_lab, state, "etcd.restore", path)
                        add("sr-cli", t_snap + t_restore)
                    else:
                        add("sr-hand", hand.snapshot_restore(args.keys))
                    assert client.count(inv.controllers, PREFIX) == args.keys, f"{variant}: keys lost"
                follower = inv.controllers[(r % 2) + 1]
                # etcd refuses membership changes until every member has been connected for 5 s
                # (--strict-reconfig-check): right after the restores above, replace would wait that out
                time.sleep(SETTLE_S)
                with remote.Pool() as pool:
                    ctx = Context(inv, state, connector=pool, progress=remote.QUIET)
                    t0 = time.monotonic()
                    done = replace.replace(ctx, follower.name)
                    add("replace-library", time.monotonic() - t0)
                for s in done.procedure.steps:
                    label = re.sub(r"\b[0-9a-f]{12,16}\b", "ID", " ".join(s.what.split(" (")[0].split()[:4]))
                    replace_steps.setdefault(label.replace(follower.name, "NODE"), []).append(s.seconds)
                time.sleep(SETTLE_S)
                add("replace-cli", cli(the_lab, state, "etcd.replace", follower.name)[0])
                time.sleep(SETTLE_S)
                add("replace-hand", hand.replace(follower))
                with remote.Pool() as pool:  # the hand edit of the unit is back to the render: verify agrees
                    failed = [x for x in ETCD.verify(Context(inv, state, connector=pool)) if x.status == "fail"]
                assert not failed, failed
    finally:
        lab.down(name, report=lambda _m: None)
    med = {k: statistics.median(v) for k, v in rows.items()}
    load_after = os.getloadavg()
    print(f"etcd day 2 on a 3-member lab, {args.keys} keys ({args.rounds} round(s), median seconds)")
    print(f"  {'':44}{'hand way':>10}{'hardway':>10}{'CLI':>8}{'ratio':>9}{'(CLI)':>8}")
    for key, label in (("sr", "snapshot + restore"), ("replace", "replace one member")):
        h, lib_, c = med[f"{key}-hand"], med[f"{key}-library"], med[f"{key}-cli"]
        print(f"  {label:44}{h:>10.2f}{lib_:>10.2f}{c:>8.2f}{h / lib_:>8.2f}x{h / c:>7.2f}x")
    print(f"  replace within 5 s: library {med['replace-library']:.2f}s, CLI {med['replace-cli']:.2f}s "
          f"(worst of {args.rounds}: {max(rows['replace-library']):.2f}s / {max(rows['replace-cli']):.2f}s)")
    print("  where hardway's snapshot + restore went (median s per step):")
    for what, seconds in steps.items():
        print(f"    {what:44}{statistics.median(seconds):>8.2f}")
    print("  where hardway's replace went (median s per step):")
    for what, seconds in replace_steps.items():
        print(f"    {what:44}{statistics.median(seconds):>8.2f}")
    print(f"  machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")


if __name__ == "__main__":
    main()
