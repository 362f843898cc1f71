"""The etcd chapter's judgments, from hand-made facts (no machine). Lab tests run the real thing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hardway import inventory, systemd
from hardway.chapters.base import Finding
from hardway.chapters.etcd import files as etcd_files
from hardway.chapters.etcd import ids as etcd_ids
from hardway.chapters.etcd import preflight
from hardway.chapters.etcd import verify as etcd_verify
from hardway.checks import FAIL, OK, WARN
from hardway.files import File

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
C0, C1 = INV.controllers[0], INV.controllers[1]
WAL_HEAD = (Path(__file__).parent / "data" / "etcd-3.4-wal-head.bin").read_bytes()  # another cluster's


def _wal_for(member: int, cluster: int) -> bytes:
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


def facts(**kw: object) -> preflight.NodeFacts:
    f = preflight.NodeFacts(arch="x86_64", fsync_p99_ms=1.5)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def statuses(findings: list[Finding]) -> list[str]:
    return [f.status for f in findings]


def test_fresh_node_passes_preflight() -> None:
    out = preflight.judge_preflight(INV, C0, facts(), "x86_64")
    assert statuses(out) == [OK]


def test_this_clusters_member_is_kept() -> None:
    wal = _wal_for(etcd_ids.expected_member_id(INV, C0), etcd_ids.expected_cluster_id(INV))
    out = preflight.judge_preflight(INV, C0, facts(data_dir_entries=["member"], wal_head=wal), "x86_64")
    assert out[0].status == OK and "holds this cluster's member" in out[0].message


def test_stale_member_is_refused_with_the_exact_fix_and_no_deletion() -> None:
    out = preflight.judge_preflight(INV, C0, facts(data_dir_entries=["member"], wal_head=WAL_HEAD), "x86_64")
    fail = next(f for f in out if f.status == FAIL)
    assert fail.node == "controller-0"
    assert "/var/lib/etcd/member belongs to member d622127685879b3c of cluster 6656feb867e68582" in fail.message
    assert "mv /var/lib/etcd/member /var/lib/etcd/member.stale-" in fail.message
    assert "etcdctl member add controller-0 --peer-urls=https://10.240.0.10:2380" in fail.message
    assert "--initial-cluster-state existing" in fail.message
    assert "never deletes data" in fail.message


def test_another_members_data_dir_is_refused() -> None:
    wal = _wal_for(etcd_ids.expected_member_id(INV, C1), etcd_ids.expected_cluster_id(INV))
    out = preflight.judge_preflight(INV, C0, facts(data_dir_entries=["member"], wal_head=wal), "x86_64")
    assert FAIL in statuses(out)


def test_unreadable_member_dir_is_refused() -> None:
    out = preflight.judge_preflight(INV, C0, facts(data_dir_entries=["member"], wal_head=b""), "x86_64")
    assert "has no readable WAL" in next(f for f in out if f.status == FAIL).message


def test_non_etcd_data_dir_is_refused() -> None:
    out = preflight.judge_preflight(INV, C0, facts(data_dir_entries=["lost+found", "x"]), "x86_64")
    assert "is not empty and holds no etcd member" in next(f for f in out if f.status == FAIL).message


def test_port_held_by_another_process_fails_and_our_etcd_is_fine() -> None:
    theirs = preflight.judge_preflight(INV, C0, facts(listeners={2379: "812/nginx"}, etcd_main_pid="0"), "x86_64")
    assert "port 2379 is held by 812/nginx" in next(f for f in theirs if f.status == FAIL).message
    ours = preflight.judge_preflight(INV, C0, facts(listeners={2379: "77/etcd", 2380: "77/etcd"},
                                                etcd_main_pid="77"), "x86_64")
    assert FAIL not in statuses(ours)


def test_wrong_architecture_fails() -> None:
    out = preflight.judge_preflight(INV, C0, facts(arch="aarch64"), "x86_64")
    assert "the etcd binary is x86_64 but the node is aarch64" in out[0].message


def test_slow_disk_is_warned_with_the_number() -> None:
    out = preflight.judge_preflight(INV, C0, facts(fsync_p99_ms=23.4), "x86_64")
    warn = next(f for f in out if f.status == WARN)
    assert "fdatasync p99 23.4 ms" in warn.message and "< 10 ms" in warn.message


UNIT = """[Service]
ExecStart=/usr/local/bin/etcd \\
  --name=controller-0 \\
  --client-cert-auth \\
  --initial-cluster=a=https://1.2.3.4:2380,b=https://1.2.3.5:2380 \\
  --experimental-made-up-flag=1
"""


def test_unit_flags_are_parsed_across_continuations() -> None:
    assert systemd.unit_flags(UNIT) == ["--name", "--client-cert-auth", "--initial-cluster",
                                     "--experimental-made-up-flag"]


@pytest.mark.skipif(not shutil.which("etcd"), reason="needs Debian's etcd-server (installed by scripts/setup.sh)")
def test_real_etcd_rejects_an_unknown_flag_and_names_it() -> None:
    binary = Path(shutil.which("etcd") or "")
    version, helptext = preflight.binary_help(binary)
    assert "etcd Version" in version
    assert preflight.unknown_flags(systemd.unit_flags(UNIT), helptext) == ["--experimental-made-up-flag"]


def test_elf_arch_of_this_machines_binaries() -> None:
    import platform

    assert preflight.elf_arch(Path("/bin/sh").resolve()) == platform.machine()


# --- verify judgments ------------------------------------------------------------------------

PLANNED = [File(etcd_files.UNIT_PATH, 0o644, content=b"unit"), File(etcd_files.KEY, 0o600, content=b"k", secret=True)]


def member_facts(**kw: object) -> etcd_verify.MemberFacts:
    f = etcd_verify.MemberFacts(active="active", healthy=True, health="https://10.240.0.10:2379 is healthy")
    f.hashes = {p.path: p.sha256 for p in PLANNED}
    f.files = {p.path: (p.mode, "root", "root") for p in PLANNED}
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def by_check(results: list, check: str) -> list:
    return [r for r in results if r.check == check]


def test_healthy_member_is_all_ok() -> None:
    results = etcd_verify.judge_member(INV, C0, member_facts(), PLANNED)
    assert {r.status for r in results} == {OK}


def test_missing_cert_is_named() -> None:
    f = member_facts()
    f.files[etcd_files.KEY] = None
    f.hashes[etcd_files.KEY] = None
    fails = [r for r in etcd_verify.judge_member(INV, C0, f, PLANNED) if r.status == FAIL]
    assert fails[0].node == "controller-0" and fails[0].detail == "/etc/etcd/etcd.key is missing"


def test_world_readable_key_fails() -> None:
    f = member_facts()
    f.files[etcd_files.KEY] = (0o644, "root", "root")
    assert "is 0644 root:root, want 0600" in by_check(etcd_verify.judge_member(INV, C0, f, PLANNED), "files")[0].detail


def test_hand_edited_unit_fails_drift_and_lint() -> None:
    f = member_facts(lint="/etc/systemd/system/etcd.service:7: Missing '=', ignoring line.")
    f.hashes[etcd_files.UNIT_PATH] = "0" * 64
    results = etcd_verify.judge_member(INV, C0, f, PLANNED)
    assert by_check(results, "unit-matches-render")[0].status == FAIL
    assert "Missing '='" in by_check(results, "unit-lint")[0].detail


@pytest.mark.parametrize(("line", "cause"), [
    ("rejected stream from remote peer 8e9e05c52164694d since request cluster ID mismatch", "another cluster"),
    ("wal: sync duration of 1.2s, expected less than 1s", "too slow"),
    ("open /etc/etcd/etcd.crt: no such file or directory", "file the unit references is missing"),
    ("/etc/systemd/system/etcd.service:9: Missing '=', ignoring line.", "broken line continuation"),
    ("etcd.service: Main process exited, code=exited, status=203/EXEC", "could not execute"),
    ("member 8e9e05c52164694d has already been bootstrapped", "lost its data dir"),
])
def test_journal_signatures_become_failures_with_hints(line: str, cause: str) -> None:
    f = member_facts(journal=f"starting\n{line}\nmore\n")
    journal = by_check(etcd_verify.judge_member(INV, C0, f, PLANNED), "journal")
    assert journal[0].status == FAIL and cause in journal[0].detail and journal[0].hint


def test_cluster_membership_and_single_leader() -> None:
    members = [{"ID": etcd_ids.expected_member_id(INV, n), "name": n.name, "peerURLs": [INV.etcd_peer_url(n)]}
               for n in INV.controllers]
    leader = etcd_ids.expected_member_id(INV, C1)
    facts_ = {n.name: member_facts(members=members, status={"leader": leader}) for n in INV.controllers}
    results = etcd_verify.judge_cluster(INV, facts_)
    assert [r.status for r in results] == [OK, OK]
    assert "exactly one leader: controller-1" in results[1].detail


def test_cluster_with_a_foreign_member_and_split_leaders_fails() -> None:
    members = [{"ID": 1, "name": "old-node", "peerURLs": ["https://10.9.9.9:2380"]}]
    facts_ = {"controller-0": member_facts(members=members, status={"leader": 1}),
              "controller-1": member_facts(members=members, status={"leader": 2})}
    results = etcd_verify.judge_cluster(INV, facts_)
    assert results[0].status == FAIL and "extra ['old-node']" in results[0].detail
    assert results[1].status == FAIL and "2 leaders" in results[1].detail


def test_no_quorum_means_no_member_list() -> None:
    results = etcd_verify.judge_cluster(INV, {"controller-0": member_facts(members=None, status=None)})
    assert [r.status for r in results] == [FAIL, FAIL]


def _tls_server(state, require_client_cert: bool):
    """A loopback TLS server with the cluster's apiserver cert, answering one HTTP request."""
    import socket
    import ssl
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(state.cert("kube-apiserver"), state.key("kube-apiserver"))
    ctx.load_verify_locations(state.cert("ca"))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        except (OSError, ssl.SSLError):
            pass  # the refusal under test
        finally:
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


@pytest.mark.parametrize(("require", "expected"), [(True, "refused"), (False, "HTTP/1.1 200 OK")])
def test_client_auth_probe_tells_a_demanding_server_from_an_open_one(state, require: bool, expected: str) -> None:
    port = _tls_server(state, require_client_cert=require)
    assert etcd_verify._tls_request("127.0.0.1", port, state.cert("ca"), None) == expected


def test_client_auth_probe_refuses_a_foreign_ca_certificate(state, tmp_path: Path) -> None:
    from hardway.chapters.pki import throwaway_client

    port = _tls_server(state, require_client_cert=True)
    foreign = throwaway_client(tmp_path, "ecdsa-p256")
    assert etcd_verify._tls_request("127.0.0.1", port, state.cert("ca"), foreign) == "refused"
