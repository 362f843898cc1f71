"""What the day-2 unit tests share: the sample inventory with Debian's etcd binaries, a running fake
cluster, and ways to ask which node ran what."""

from __future__ import annotations

import re
from pathlib import Path

from tests.etcd_fakes import FakeEtcd
from tests.fakes import FakeCluster

ROOT = Path(__file__).resolve().parent.parent


def running(inv, release: str = "3.4", **kw) -> tuple[FakeCluster, FakeEtcd]:
    cluster = FakeCluster()
    etcd = FakeEtcd(inv, cluster, release=release, **kw)
    etcd.bootstrap()
    return cluster, etcd


def commands(cluster: FakeCluster) -> list[str]:
    """Every command run, as "node: command", in order (gathers excluded)."""
    order = []
    for name, node in cluster.nodes.items():
        order += [(i, f"{name}: {c}") for i, c in enumerate(node.commands)]
    return [c for _, c in sorted(order)]


def ran(cluster: FakeCluster, name: str, pattern: str) -> list[str]:
    return [c for c in cluster[name].commands if re.search(pattern, c)]
