"""etcd's own identity arithmetic, so hardway can tell THIS cluster's data dir from a stale one.

With ``--initial-cluster-state new`` etcd derives every ID from the configuration alone:
a member ID is the first 8 bytes (big-endian) of sha1(sorted peer URLs joined + cluster
token), and the cluster ID is the same over the sorted member IDs. Every WAL segment starts with
a metadata record holding the member's and the cluster's ID, so reading a few bytes of the data
dir says whose member it is — without starting etcd and without trusting a marker file.
"""

from __future__ import annotations

import hashlib
import struct

from hardway.inventory import Inventory, Node

# walpb record types (etcd wal/wal.go)
_METADATA_TYPE = 1


def member_id(peer_urls: list[str], token: str) -> int:
    data = "".join(sorted(peer_urls)).encode() + token.encode()
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big")


def cluster_id(member_ids: list[int]) -> int:
    data = b"".join(i.to_bytes(8, "big") for i in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big")


def expected_member_id(inv: Inventory, node: Node) -> int:
    return member_id([inv.etcd_peer_url(node)], inv.cluster_name)


def expected_cluster_id(inv: Inventory) -> int:
    return cluster_id([expected_member_id(inv, n) for n in inv.controllers])


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Decode the scalar and bytes fields of one protobuf message (enough for walpb types)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out[number] = buf[pos:pos + length]
            pos += length
        elif wire == 1:
            out[number] = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 5:
            out[number] = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def wal_metadata(segment_head: bytes) -> tuple[int, int] | None:
    """(member ID, cluster ID) from the first bytes of a WAL segment; None if none is found.

    Frames are an 8-byte little-endian length (top byte: padding flag and size) followed by a
    walpb.Record{type=1, crc=2, data=3}; the metadata record's data is {NodeID=1, ClusterID=2}.
    """
    pos = 0
    for _ in range(8):  # the metadata record is among the first few frames
        if pos + 8 > len(segment_head):
            return None
        (length_field,) = struct.unpack_from("<q", segment_head, pos)
        pos += 8
        size = length_field & 0x00FFFFFFFFFFFFFF
        pad = (length_field >> 56) & 0x7 if length_field < 0 else 0
        record = segment_head[pos:pos + size]
        pos += size + pad
        if len(record) < size or size == 0:
            return None
        try:
            fields = _fields(record)
            if fields.get(1) == _METADATA_TYPE and isinstance(fields.get(3), bytes):
                meta = _fields(fields[3])  # type: ignore[arg-type]
                node, cluster = meta.get(1), meta.get(2)
                if isinstance(node, int) and isinstance(cluster, int):
                    return node, cluster
        except (ValueError, struct.error):
            return None
    return None
