"""etcd identity arithmetic against a real etcd 3.4 WAL (tests/data: member n1, token 'tok')."""

from __future__ import annotations

from pathlib import Path

from hardway.chapters.etcd import ids as etcd_ids

WAL_HEAD = (Path(__file__).parent / "data" / "etcd-3.4-wal-head.bin").read_bytes()
# What `etcdctl member list -w json` reported for that member (name n1, token tok).
REAL_MEMBER_ID = 15429915573580438332
REAL_CLUSTER_ID = 7374361507836364162


def test_member_and_cluster_id_match_what_etcd_computed() -> None:
    mid = etcd_ids.member_id(["http://127.0.0.1:12380"], "tok")
    assert mid == REAL_MEMBER_ID
    assert etcd_ids.cluster_id([mid]) == REAL_CLUSTER_ID


def test_wal_metadata_is_read_from_a_real_segment() -> None:
    assert etcd_ids.wal_metadata(WAL_HEAD) == (REAL_MEMBER_ID, REAL_CLUSTER_ID)


def test_another_token_gives_another_cluster() -> None:
    assert etcd_ids.member_id(["http://127.0.0.1:12380"], "other") != REAL_MEMBER_ID


def test_garbage_and_truncated_segments_yield_none() -> None:
    assert etcd_ids.wal_metadata(b"") is None
    assert etcd_ids.wal_metadata(b"\x00" * 64) is None
    assert etcd_ids.wal_metadata(WAL_HEAD[:20]) is None
    assert etcd_ids.wal_metadata(b"\xff" * 64) is None
