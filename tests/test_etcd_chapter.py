"""The etcd chapter's judgments, from hand-made facts (no machine). Lab tests run the real thing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hardway import inventory, systemd
from hardway.chapters.base import Finding
from hardway.chapters.etcd import client_auth, cluster, datadir, preflight
from hardway.chapters.etcd import files as etcd_files
from hardway.chapters.etcd import ids as etcd_ids
from hardway.chapters.etcd import verify as etcd_verify
from hardway.checks import FAIL, OK, SKIP, WARN
from hardway.files import File
from tests.etcd_fakes import wal_for

ROOT = Path(__file__).resolve().parent.parent
INV = inventory.load(ROOT / "inventory" / "sample.yaml")
C0, C1 = INV.controllers[0], INV.controllers[1]
WAL_HEAD = (Path(__file__).parent / "data" / "etcd-3.4-wal-head.bin").read_bytes()  # another cluster's





def facts(**kw: object) -> preflight.NodeFacts:
    f = preflight.NodeFacts(arch="x86_64", fsync_p99_ms=1.5)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def statuses(findings: list[Finding]) -> list[str]:
    return [f.status for f in findings]


OURS = {n.name: wal_for(etcd_ids.expected_member_id(INV, n), etcd_ids.expected_cluster_id(INV))
        for n in INV.controllers}


def data(head: bytes | None = None, *entries: str) -> datadir.DataDir:
    """A data dir holding ``head``'s member (or only ``entries``)."""
    names = ("member", *entries) if head is not None else entries
    return datadir.DataDir(tuple(names), etcd_ids.wal_metadata(head) if head else None)


def view_of(dirs: dict[str, datadir.DataDir], serving: tuple[str, ...] = (), active: tuple[str, ...] = ()
            ) -> cluster.ClusterView:
    """Controllers with ``dirs``; ``serving`` ones answer with hardway's bootstrap identity."""
    members = [cluster.Member(etcd_ids.expected_member_id(INV, n), n.name, (INV.etcd_peer_url(n),))
               for n in INV.controllers]
    views = {}
    for n in INV.controllers:
        up = n.name in serving
        status = {"header": {"cluster_id": etcd_ids.expected_cluster_id(INV),
                             "member_id": etcd_ids.expected_member_id(INV, n)},
                  "leader": members[0].id} if up else None
        views[n.name] = cluster.MemberView(n, "active" if up or n.name in active else "inactive", up,
                                           "is healthy" if up else "", status, members if up else None,
                                           data=dirs.get(n.name, datadir.DataDir()))
    return cluster.ClusterView(INV, views)


def test_fresh_node_passes_preflight_and_prints_its_disk_figure() -> None:
    out = preflight.judge_preflight(INV, C0, facts(), "x86_64")
    assert statuses(out) == [OK]
    assert out[0].message == "fdatasync p99 1.50 ms in /var/lib/etcd (etcd wants < 10 ms)"


def test_this_clusters_members_are_kept() -> None:
    together = preflight.judge_together(INV, view_of({n: data(w) for n, w in OURS.items()}))
    assert statuses(together.findings) == [OK, OK, OK] and not together.join
    assert "holds this cluster's member" in together.findings[0].message


def test_stale_member_is_refused_with_a_fix_that_moves_the_whole_member_out_of_the_data_dir() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": data(WAL_HEAD)}
    fail = next(f for f in preflight.judge_together(INV, view_of(dirs)).findings if f.status == FAIL)
    assert fail.node == "controller-0"
    assert "/var/lib/etcd holds member d622127685879b3c of cluster 6656feb867e68582" in fail.message
    # the fix moves member/ OUT of the data dir (a member.stale-* left inside was refused by the next run)
    assert ("`systemctl stop etcd; d=/var/lib/etcd.removed-$(date +%Y%m%d%H%M%S); mkdir -m 0700 \"$d\" && "
            "find /var/lib/etcd -mindepth 1 -maxdepth 1 ! -name lost+found -exec mv -t \"$d\" {} +`, then "
            "`invoke bootstrap-etcd`") in fail.message
    assert "never deletes data" in fail.message


def test_stale_member_beside_serving_ones_is_refused_with_replace_as_the_fix() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": data(WAL_HEAD)}
    view = view_of(dirs, serving=("controller-1", "controller-2"))
    fail = next(f for f in preflight.judge_together(INV, view).findings if f.status == FAIL)
    assert fail.node == "controller-0" and "fix: `invoke etcd.replace controller-0`" in fail.message


def test_another_members_data_dir_is_refused() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": data(OURS["controller-1"])}
    fail = next(f for f in preflight.judge_together(INV, view_of(dirs)).findings if f.status == FAIL)
    assert fail.node == "controller-0" and "which hardway's bootstrap gave to another controller" in fail.message


def test_a_member_added_later_is_not_judged_by_bootstrap_ids_while_nothing_serves() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": data(wal_for(0xABCDEF,
                                                                                  etcd_ids.expected_cluster_id(INV)))}
    assert FAIL not in statuses(preflight.judge_together(INV, view_of(dirs)).findings)


def test_a_removed_members_data_is_named_when_the_cluster_serves() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": data(wal_for(0xABCDEF,
                                                                                  etcd_ids.expected_cluster_id(INV)))}
    view = view_of(dirs, serving=("controller-1", "controller-2"))
    fail = next(f for f in preflight.judge_together(INV, view).findings if f.status == FAIL)
    assert "holds member abcdef of this cluster, but this cluster lists" in fail.message
    assert "the member was removed" in fail.message


def test_unreadable_member_dir_is_refused() -> None:
    dirs = {n: data(w) for n, w in OURS.items()} | {"controller-0": datadir.DataDir(("member",), None)}
    fail = next(f for f in preflight.judge_together(INV, view_of(dirs)).findings if f.status == FAIL)
    assert "has no readable WAL" in fail.message


def test_non_etcd_data_dir_is_refused_but_lost_and_found_is_accepted() -> None:
    out = preflight.judge_preflight(INV, C0, facts(data=datadir.DataDir(("lost+found", "x"))), "x86_64")
    fail = next(f for f in out if f.status == FAIL)
    assert "is not empty and holds no etcd member (x)" in fail.message
    fresh_disk = preflight.judge_preflight(INV, C0, facts(data=datadir.DataDir(("lost+found",))), "x86_64")
    assert FAIL not in statuses(fresh_disk)
    with_member = data(OURS["controller-0"], "lost+found")
    assert with_member.has_member and not with_member.others


def test_mixed_data_dirs_are_named_before_anything_starts() -> None:
    view = view_of({"controller-0": data(OURS["controller-0"])})  # the two others wiped, nothing serves
    together = preflight.judge_together(INV, view)
    fail = next(f for f in together.findings if f.status == FAIL)
    assert fail.message.startswith("controller-0 hold(s) this cluster's data but controller-1, controller-2 "
                                   "have none, and no member serves")
    assert "`invoke etcd.restore SNAPSHOT`" in fail.message and not together.join


def test_empty_members_join_when_the_others_serve_or_hold_a_quorum() -> None:
    held = {n: data(OURS[n]) for n in ("controller-1", "controller-2")}
    assert preflight.judge_together(INV, view_of(held)).join == ["controller-0"]  # all stopped, 2 of 3 hold data
    serving = preflight.judge_together(INV, view_of(held, serving=("controller-1", "controller-2")))
    assert serving.join == ["controller-0"] and FAIL not in statuses(serving.findings)
    assert "joins them as a new member" in next(f for f in serving.findings if f.node == "controller-0").message


def test_a_fresh_cluster_starts_everything_new() -> None:
    together = preflight.judge_together(INV, view_of({}))
    assert together.findings == [] and together.join == []


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
    assert "fdatasync p99 23.40 ms" in warn.message and "< 10 ms" in warn.message


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


def member_facts(node=C0, view: cluster.MemberView | None = None, **kw: object) -> etcd_verify.MemberFacts:
    """A healthy member holding hardway's bootstrap identity, changed by ``kw``."""
    view = view or view_of({n.name: data(OURS[n.name]) for n in INV.controllers},
                           serving=tuple(n.name for n in INV.controllers))[node.name]
    f = etcd_verify.MemberFacts(view, fsync_p99_ms=1.5, write=(True, "OK"))
    f.hashes = {p.path: p.sha256 for p in PLANNED}
    f.files = {p.path: (p.mode, "root", "root") for p in PLANNED}
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def all_facts(**per_node: etcd_verify.MemberFacts) -> dict[str, etcd_verify.MemberFacts]:
    out = {n.name: member_facts(n) for n in INV.controllers}
    out.update({k.replace("_", "-"): v for k, v in per_node.items()})
    return out


def by_check(results: list, check: str, node: str | None = None) -> list:
    return [r for r in results if r.check == check and node in (None, r.node)]


def judge_all(facts_: dict[str, etcd_verify.MemberFacts]) -> list:
    return etcd_verify.judge(INV, facts_, {n.name: PLANNED for n in INV.controllers})


def test_healthy_cluster_is_all_ok_with_the_disk_figure_and_a_real_write() -> None:
    results = judge_all(all_facts())
    assert {r.status for r in results} == {OK}, [r for r in results if r.status != OK]
    assert by_check(results, "disk-fsync", "controller-0")[0].detail == \
        "fdatasync p99 1.50 ms in /var/lib/etcd (etcd wants < 10 ms)"
    assert by_check(results, "quorum")[0].detail == \
        "3 of 3 members up, quorum kept, writes work (a hardway key written through controller-0)"


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


def failed_view(node=C0, active: str = "failed") -> cluster.MemberView:
    return cluster.MemberView(node, active, False, "", None, None, data=data(OURS[node.name]))


@pytest.mark.parametrize(("line", "cause"), [
    ("wal: sync duration of 1.2s, expected less than 1s", "too slow"),
    ("open /etc/etcd/etcd.crt: no such file or directory", "file the unit references is missing"),
    ("/etc/systemd/system/etcd.service:9: Missing '=', ignoring line.", "broken line continuation"),
    ("etcd.service: Main process exited, code=exited, status=203/EXEC", "could not execute"),
    ("member 8e9e05c52164694d has already been bootstrapped", "data dir was lost"),
    ("the member has been permanently removed from the cluster", "removed from the cluster"),
    ('{"msg":"member count is unequal"}', "differs from the cluster's member list"),
    ("remote error: tls: bad certificate: x509: certificate is valid for 10.0.0.5, not 10.0.0.9", "SAN missing"),
])
def test_a_signature_on_a_failing_member_is_a_failure_with_its_fix(line: str, cause: str) -> None:
    f = member_facts(view=failed_view(), journal=f"starting\n{line}\nmore\n")
    journal = by_check(judge_all(all_facts(controller_0=f)), "journal", "controller-0")
    assert journal[0].status == FAIL and cause in journal[0].detail and journal[0].hint


def test_a_signature_on_a_healthy_member_no_longer_counts() -> None:
    f = member_facts(journal="member 8e9e05c52164694d has already been bootstrapped\n")
    journal = by_check(judge_all(all_facts(controller_0=f)), "journal", "controller-0")
    assert journal[0].status == OK and "explains no failure now: this member serves" in journal[0].detail


def test_a_stopped_members_old_journal_is_history() -> None:
    f = member_facts(view=failed_view(active="inactive"), journal="request cluster ID mismatch\n")
    results = judge_all(all_facts(controller_0=f))
    assert by_check(results, "journal", "controller-0")[0].status == OK
    active = by_check(results, "unit-active", "controller-0")[0]
    assert active.status == FAIL and "`invoke bootstrap-etcd`" in active.hint
    assert by_check(results, "endpoint-health", "controller-0")[0].status == SKIP
    quorum_ = by_check(results, "quorum")[0]
    assert quorum_.status == WARN
    assert quorum_.detail == "2 of 3 members up, quorum kept, writes work (a hardway key written through controller-1)"
    assert "not serving: controller-0; `invoke bootstrap-etcd`" in quorum_.hint


def test_cluster_id_mismatch_blames_the_stale_member_not_its_peers() -> None:
    mismatch = "request cluster ID mismatch\n"
    stale = member_facts(view=cluster.MemberView(C0, "activating", data=data(WAL_HEAD)), journal=mismatch)
    facts_ = all_facts(controller_0=stale)
    for n in ("controller-1", "controller-2"):
        facts_[n].journal = mismatch
    results = judge_all(facts_)
    assert by_check(results, "data-dir", "controller-0")[0].status == FAIL
    assert by_check(results, "data-dir", "controller-0")[0].hint.startswith("`invoke etcd.replace controller-0`")
    assert by_check(results, "journal", "controller-0")[0].status == FAIL
    for n in ("controller-1", "controller-2"):
        echo = by_check(results, "journal", n)[0]
        assert echo.status == WARN and "the echo of controller-0 failing" in echo.detail
        assert "`invoke etcd.replace controller-0`" in echo.hint
        assert by_check(results, "data-dir", n)[0].status == OK


def test_after_the_repair_the_old_mismatch_lines_count_nowhere() -> None:
    facts_ = all_facts()
    for f in facts_.values():
        f.journal = "request cluster ID mismatch\n"
    assert {r.status for r in by_check(judge_all(facts_), "journal")} == {OK}


def test_membership_compares_names_and_peer_urls_not_bootstrap_ids() -> None:
    facts_ = all_facts()
    replaced = [cluster.Member(0xABC, m.name, m.peer_urls) if m.name == "controller-0" else m
                for m in facts_["controller-1"].view.members]
    for f in facts_.values():
        f.view.members = replaced
    assert by_check(judge_all(facts_), "members")[0].status == OK


def test_a_foreign_member_an_unstarted_one_and_a_learner_are_named() -> None:
    facts_ = all_facts()
    members = [cluster.Member(1, "old-node", ("https://10.9.9.9:2380",)),
               cluster.Member(2, "", (INV.etcd_peer_url(C0),)),
               cluster.Member(3, "controller-1", (INV.etcd_peer_url(C1),), learner=True)]
    for f in facts_.values():
        f.view.members = members
    detail = by_check(judge_all(facts_), "members")[0].detail
    assert "extra member old-node 1 (https://10.9.9.9:2380)" in detail
    assert "controller-0 is added but never started (member 2)" in detail
    assert "controller-1 is a learner" in detail and "controller-2 missing" in detail


def test_split_leaders_fail() -> None:
    facts_ = all_facts()
    facts_["controller-1"].view.status = {**facts_["controller-1"].view.status, "leader": 99}
    leader = by_check(judge_all(facts_), "leader")[0]
    assert leader.status == FAIL and "2 leaders" in leader.detail


def test_no_quorum_means_no_member_list_and_no_writes() -> None:
    facts_ = {n.name: member_facts(n, view=failed_view(n, "activating")) for n in INV.controllers}
    results = judge_all(facts_)
    assert [r.status for r in results if r.node == "-"] == [FAIL, FAIL, FAIL]
    assert by_check(results, "quorum")[0].detail == "0 of 3 members up, quorum lost, writes not tried: no member serves"


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
    assert client_auth._tls_request("127.0.0.1", port, state.cert("ca"), None) == expected


def test_client_auth_probe_refuses_a_foreign_ca_certificate(state, tmp_path: Path) -> None:
    from hardway.chapters.pki import throwaway_client

    port = _tls_server(state, require_client_cert=True)
    foreign = throwaway_client(tmp_path, "ecdsa-p256")
    assert client_auth._tls_request("127.0.0.1", port, state.cert("ca"), foreign) == "refused"
