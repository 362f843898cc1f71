"""Which etcd tool restores a snapshot and how a member joins, by release (recorded `--version` outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardway.chapters.etcd.tools import EtcdRelease, parse_release
from hardway.errors import HardwayError
from hardway.facts import FactOutput

DATA = Path(__file__).parent / "data" / "etcd-versions"


def release(name: str, etcdutl: bool = False) -> EtcdRelease:
    text = (DATA / f"etcd-{name}.txt").read_text() + ("etcdutl: yes\n" if etcdutl else "")
    return parse_release(FactOutput(text))


def test_34_restores_with_etcdctl_and_joins_without_a_learner() -> None:
    r = release("3.4")
    assert r.version == (3, 4, 23) and r.dotted == "3.4.23"
    assert r.snapshot_tool("c0") == "ETCDCTL_API=3 /usr/local/bin/etcdctl" and not r.learners
    assert release("3.4", etcdutl=True).snapshot_tool("c0") == "ETCDCTL_API=3 /usr/local/bin/etcdctl"


def test_35_restores_with_etcdutl_when_present_else_the_deprecated_etcdctl_form() -> None:
    assert release("3.5", etcdutl=True).snapshot_tool("c0") == "/usr/local/bin/etcdutl"
    assert release("3.5").snapshot_tool("c0") == "ETCDCTL_API=3 /usr/local/bin/etcdctl"
    assert release("3.5").learners


def test_36_needs_etcdutl_and_says_how_to_get_it() -> None:
    assert release("3.6", etcdutl=True).snapshot_tool("c0") == "/usr/local/bin/etcdutl"
    with pytest.raises(HardwayError, match=r"^c0: etcd 3\.6\.1 restores snapshots only with etcdutl, which is not in "
                                           r"/usr/local/bin; add binaries\.etcdutl to the inventory and run "
                                           r"`invoke bootstrap-etcd`$"):
        release("3.6").snapshot_tool("c0")


def test_no_etcd_binary_is_named() -> None:
    r = parse_release(FactOutput("sh: 1: /usr/local/bin/etcd: not found\n"))
    assert not r.known
    with pytest.raises(HardwayError, match=r"^c0: cannot tell which etcd release runs there \(sh: 1: .*run "
                                           r"`invoke bootstrap-etcd` first$"):
        r.snapshot_tool("c0")
