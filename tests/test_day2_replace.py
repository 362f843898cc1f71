"""etcd.replace and bootstrap's join path, step by step, over the fake etcd (tests/etcd_fakes.py).

Each test names the logic it would catch broken: the order of the steps, which node runs what, the
quorum guard, hex member IDs, learners on 3.5+, undo on Ctrl-C. tests/test_day2_lab.py proves the
same on real etcd with a client writing throughout.
"""

from __future__ import annotations

import pytest

from hardway import procedure
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd import ids
from hardway.chapters.etcd.files import UNIT_PATH
from hardway.day2 import replace
from hardway.errors import HardwayError
from hardway.remote import QUIET
from tests.day2_support import commands, ran, running
from tests.etcd_fakes import stale
from tests.fakes import FakeCluster


def ctx_for(inv, state, cluster: FakeCluster, **kw) -> Context:
    return Context(inv, state, connector=cluster.connector, progress=QUIET, timeout=kw.pop("timeout", 5.0), **kw)


def test_replace_a_follower_in_the_documented_order(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    old = etcd.member_at("controller-1")["ID"]
    r = replace.replace(ctx_for(inv, state, cluster), "controller-1")
    c1 = cluster["controller-1"]
    steps = [s.what.split(" (")[0].split(" aside")[0] for s in r.procedure.steps]
    assert steps == [f"member remove {old:x}", "stop etcd", "move its data", "member add controller-1",
                     "start it with --initial-cluster-state=existing and the cluster's member list",
                     "wait until it is started and in sync", "put the steady-state unit back",
                     "wait until every member names the same leader"]
    # membership changes go through a member that serves, with the ID in hex (JSON gave it in decimal)
    assert ran(cluster, "controller-1", "etcdctl .*member") == []
    via = [n for n in ("controller-0", "controller-2") if ran(cluster, n, "member remove")]
    assert via and ran(cluster, via[0], f"member remove {old:x}$")
    assert ran(cluster, via[0], r"member add controller-1 --peer-urls=https://10\.240\.0\.11:2380 -w json$")
    # the data went aside, never deleted; the member that came back is the one added, started
    assert ran(cluster, "controller-1", r"^d=/var/lib/etcd\.removed-\d+; mkdir -m 0700")
    assert not ran(cluster, "controller-1", r"rm -rf -- /var/lib/etcd")
    new = etcd.member_at("controller-1")
    assert new["ID"] != old and new["name"] == "controller-1" and etcd.data["controller-1"] == (new["ID"],
                                                                                                 etcd.cluster_id)
    assert r.joined.member_id == new["ID"]
    # started with --initial-cluster-state=existing, then the steady unit is back (no restart)
    pushes = [c for c in c1.commands if c.startswith("set -e;")]
    assert len(pushes) == 2 and pushes[0].endswith("systemctl start --no-block etcd")
    assert pushes[1].endswith("systemctl daemon-reload") and "start" not in pushes[1].split(";")[-1]
    steady = next(f for f in Context(inv, state).files(ETCD, inv.node("controller-1")) if f.path == UNIT_PATH)
    assert c1.files[UNIT_PATH].data == steady.data()
    assert c1.restarts == []


def test_the_unit_it_starts_with_names_the_clusters_real_members(lab_like) -> None:
    inv, state = lab_like
    cluster, _etcd = running(inv)
    seen = []
    real = cluster.connector

    def spy(inv_, node):
        r = real(inv_, node)
        feed = r.feed

        def capture(command, write, **kw):
            out = feed(command, write, **kw)
            if node.name == "controller-1" and UNIT_PATH in cluster["controller-1"].files:
                seen.append(cluster["controller-1"].files[UNIT_PATH].data.decode())
            return out
        r.feed = capture
        return r

    cluster.connector = spy  # type: ignore[method-assign]
    replace.replace(ctx_for(inv, state, cluster), "controller-1")
    joining = seen[0]
    assert "--initial-cluster-state=existing" in joining and "--initial-cluster-state=new" not in joining
    assert "controller-1=https://10.240.0.11:2380" in joining
    assert "--initial-cluster-state=new" in seen[-1]


def test_a_leader_hands_over_leadership_before_it_stops(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    etcd.leader = etcd.member_at("controller-0")["ID"]
    replace.replace(ctx_for(inv, state, cluster), "controller-0")
    c0 = cluster["controller-0"].commands
    move = next(i for i, c in enumerate(c0) if "move-leader" in c)
    stop = next(i for i, c in enumerate(c0) if c == "systemctl stop etcd")
    assert move < stop
    assert etcd.leader != etcd.member_at("controller-0")["ID"]


def test_on_35_the_member_joins_as_a_learner_and_is_promoted(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv, release="3.5")
    replace.replace(ctx_for(inv, state, cluster), "controller-2")
    assert any(ran(cluster, n, r"member add controller-2 .* --learner -w json$") for n in ("controller-0",
                                                                                          "controller-1"))
    assert any(ran(cluster, n, "member promote") for n in ("controller-0", "controller-1"))
    assert etcd.member_at("controller-2").get("isLearner") is False


def test_a_replaced_disk_and_a_member_already_gone(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    etcd.members = [m for m in etcd.members if m["name"] != "controller-2"]  # removed by hand earlier
    etcd.data["controller-2"] = None  # a new disk: no data dir at all
    cluster["controller-2"].services["etcd"].active = False
    cluster["controller-2"].files.clear()  # and nothing hardway installed
    r = replace.replace(ctx_for(inv, state, cluster), "controller-2")
    whats = [s.what for s in r.procedure.steps]
    assert not any(w.startswith(("stop", "move", "member remove")) for w in whats), whats
    assert etcd.member_at("controller-2")["name"] == "controller-2" and r.aside is None
    assert {"/usr/local/bin/etcd", "/etc/etcd/etcd.key", UNIT_PATH} <= set(cluster["controller-2"].files)


def test_the_stale_member_of_the_mismatch_story_is_replaced(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    stale(etcd, "controller-0")
    cluster["controller-0"].services["etcd"].active = True
    replace.replace(ctx_for(inv, state, cluster), "controller-0")
    assert etcd.data["controller-0"][1] == etcd.cluster_id
    assert list(etcd.aside.values()) == [(0xD622127685879B3C, 0x6656FEB867E68582)], "the stale data moved aside"


def test_dry_run_prints_every_step_and_changes_nothing(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    before = [dict(m) for m in etcd.members]
    r = replace.replace(ctx_for(inv, state, cluster), "controller-1", dry_run=True)
    text = r.procedure.describe()
    assert "member remove" in text and "systemctl stop etcd" in text and "--initial-cluster-state=existing" in text
    assert commands(cluster) == [] and etcd.members == before


@pytest.mark.parametrize(("name", "message"), [
    ("controller-9", r"no node named 'controller-9' \(known: controller-0, .*"),
    ("worker-0", r"^worker-0 is not an etcd member: members run on the controllers \(controller-0, controller-1, "
                 r"controller-2\)"),
])
def test_unknown_node_and_a_node_that_is_not_a_member(lab_like, name: str, message: str) -> None:
    inv, state = lab_like
    cluster, _ = running(inv)
    with pytest.raises(HardwayError, match=message):
        replace.replace(ctx_for(inv, state, cluster), name)
    assert commands(cluster) == []


def test_a_replace_that_would_lose_quorum_is_refused(lab_like) -> None:
    inv, state = lab_like
    cluster, _etcd = running(inv)
    cluster["controller-2"].services["etcd"].active = False  # another member is already down
    with pytest.raises(HardwayError, match=r"^replacing controller-0 would lose quorum: 1 other member\(s\) serve "
                                           r"\(controller-1\) but 2 of 3 are needed while controller-0 rejoins; start "
                                           r"the stopped members first \(`invoke bootstrap-etcd`\)"):
        replace.replace(ctx_for(inv, state, cluster), "controller-0")
    assert commands(cluster) == []


def test_the_only_member_is_never_replaced(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    etcd.members = [etcd.member_at("controller-0")]
    with pytest.raises(HardwayError, match=r"^controller-0 is the cluster's only etcd member: replacing it loses "
                                           r"every key; take a snapshot"):
        replace.replace(ctx_for(inv, state, cluster), "controller-0")


def test_an_unreachable_node_is_refused_before_anything(lab_like) -> None:
    inv, state = lab_like
    cluster, _ = running(inv)
    cluster["controller-1"].unreachable = True
    with pytest.raises(HardwayError, match=r"^controller-1 \(10\.240\.0\.11:22\): unreachable .*start the machine or "
                                           r"fix SSH, then re-run"):
        replace.replace(ctx_for(inv, state, cluster), "controller-1")
    assert commands(cluster) == []


def test_ctrl_c_before_the_member_is_removed_changes_nothing(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    etcd.leader = etcd.member_at("controller-1")["ID"]
    members = [dict(m) for m in etcd.members]
    real = etcd._move_leader

    def move_then_ctrl_c(cmd):
        out = real(cmd)
        procedure.interrupt()  # what the SIGINT handler does
        return out

    etcd._move_leader = move_then_ctrl_c  # type: ignore[method-assign]
    cluster["controller-1"].handlers.clear()
    etcd._install("controller-1")
    with pytest.raises(HardwayError) as err:
        replace.replace(ctx_for(inv, state, cluster), "controller-1")
    assert str(err.value).startswith("etcd.replace controller-1: interrupted (Ctrl-C) at step 2 (member remove ")
    assert str(err.value).endswith("the cluster is as it was before")
    assert etcd.members == members and etcd.serving("controller-1")
    assert not ran(cluster, "controller-1", "systemctl stop")


def test_ctrl_c_after_the_member_is_removed_says_exactly_what_to_run(lab_like) -> None:
    inv, state = lab_like
    cluster, etcd = running(inv)
    real = etcd._remove

    def remove_then_ctrl_c(cmd):
        out = real(cmd)
        procedure.interrupt()
        return out

    etcd._remove = remove_then_ctrl_c  # type: ignore[method-assign]
    for n in ("controller-0", "controller-2"):
        cluster[n].handlers.clear()
        etcd._install(n)
    with pytest.raises(HardwayError, match=r"^etcd\.replace controller-1: interrupted \(Ctrl-C\) at step 2 \(stop "
                                           r"etcd on controller-1\); to finish, run `invoke etcd\.replace "
                                           r"controller-1`$"):
        replace.replace(ctx_for(inv, state, cluster), "controller-1")
    # and running it finishes the job: the member is gone from the list, so it is only added
    r = replace.replace(ctx_for(inv, state, cluster), "controller-1")
    assert not any(s.what.startswith("member remove") for s in r.procedure.steps)
    assert etcd.member_at("controller-1")["name"] == "controller-1" and etcd.serving("controller-1")


# --- bootstrap-etcd joins an empty controller through the same path -------------------------------


def test_bootstrap_joins_a_controller_with_an_empty_data_dir_as_a_new_member(lab_like, monkeypatch) -> None:
    from hardway.chapters.etcd import verify

    monkeypatch.setattr(verify, "client_auth_results", lambda inv, state, node: [])
    inv, state = lab_like
    cluster, etcd = running(inv)
    ETCD.apply(ctx_for(inv, state, cluster))  # the files, as a bootstrapped cluster has them
    old = etcd.member_at("controller-0")["ID"]
    etcd.data["controller-0"] = None  # reset, or a new disk: the member is still listed
    cluster["controller-0"].services["etcd"].active = False
    for node in cluster.nodes.values():
        node.commands.clear()
    report = ETCD.apply(ctx_for(inv, state, cluster))
    assert report.started == {"controller-0": ["etcd"]}
    assert any(ran(cluster, n, f"member remove {old:x}$") for n in ("controller-1", "controller-2"))
    new = etcd.member_at("controller-0")
    assert new["ID"] != old and new["name"] == "controller-0"
    # held until added: started early, it would have taken its old identity (and never served again)
    assert etcd.data["controller-0"] == (new["ID"], etcd.cluster_id)
    assert not [r for r in report.results if r.status == "fail"], [r for r in report.results if r.status == "fail"]
    assert ids.expected_member_id(inv, inv.controllers[0]) == old


def test_a_joining_member_whose_announcement_was_lost_is_restarted_once(lab_like, monkeypatch) -> None:
    """etcd 3.4 can lose a new member's first "publish" and retries it only after 7 s: hardway, seeing
    its peers up in its journal but no announcement, restarts the member once (a restart publishes)."""
    from hardway.chapters.etcd import membership

    monkeypatch.setattr(membership, "PUBLISH_GRACE_S", 0.0)
    inv, state = lab_like
    cluster, etcd = running(inv)
    node = cluster["controller-1"]
    real_serving = etcd.serving

    def stuck_until_restarted(name):  # the member got its data but never announced itself
        return real_serving(name) and (name != "controller-1" or bool(node.restarts))

    etcd.serving = stuck_until_restarted  # type: ignore[method-assign]
    node.facts["unit_states"] = lambda f, n: (
        "Id=etcd.service\nActiveState=" + ("active" if n.restarts or not n.starts else "activating") +
        "\nActiveEnterTimestamp=@1\nUnitFileState=enabled\nMainPID=7\n")
    etcd.journal["controller-1"] = '{"msg":"initialized peer connections; fast-forwarding election ticks"}\n'
    r = replace.replace(ctx_for(inv, state, cluster), "controller-1")
    assert r.joined.republished and node.restarts == ["etcd"]
    assert "restarted once: its first announcement was lost" in r.summary()


def test_a_slow_but_healthy_join_is_never_restarted(lab_like, monkeypatch) -> None:
    from hardway.chapters.etcd import membership

    monkeypatch.setattr(membership, "PUBLISH_GRACE_S", 0.0)
    inv, state = lab_like
    cluster, etcd = running(inv, unhealthy_polls=5)  # slow to answer, but its journal says nothing is lost
    etcd.polls.update({"controller-0": 99, "controller-2": 99})  # only the joining member is slow
    node = cluster["controller-1"]
    etcd.journal["controller-1"] = ('{"msg":"initialized peer connections; fast-forwarding election ticks"}\n'
                                    '{"msg":"published local member to cluster through raft"}\n')
    r = replace.replace(ctx_for(inv, state, cluster), "controller-1")
    assert not r.joined.republished and node.restarts == []
