"""rotate-encryption-key over the fact-level fake: the stages in order, every resume point (each stage
read back from the nodes' configs), the guard that never drops a key still encrypting a Secret, a
changed provider, the no-op re-run. The same roll runs on real nodes in tests/test_encryption_rotation_lab.py.
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from hardway import encryption, jumpbox, procedure
from hardway import encryption_rotation as er
from hardway.chapters import Context
from hardway.errors import HardwayError
from hardway.facts import FactOutput
from hardway.remote import QUIET, Progress
from hardway.state import PkiState
from tests import test_control_plane_apply as cpa
from tests.fakes import FakeCluster

CONFIG = er.CONFIG
jumpbox_probes = cpa.jumpbox_probes  # the jumpbox's TLS probes see the fake cluster (autouse)


class Etcd:
    """What etcdctl get --prefix /registry/secrets/ answers: key -> raw value."""

    def __init__(self, cluster: FakeCluster, inv) -> None:
        self.values: dict[str, bytes] = {}
        for c in inv.controllers:
            cluster[c.name].facts["etcd_secret_keys"] = self.answer

    def answer(self, fact, node) -> FactOutput:
        kvs = [{"key": base64.b64encode(k.encode()).decode(), "value": base64.b64encode(v).decode()}
               for k, v in self.values.items()]
        return FactOutput(json.dumps({"header": {}, "kvs": kvs, "count": len(kvs)}), 0)


@pytest.fixture
def env(tmp_path):
    inv = cpa.sample(tmp_path)
    state = PkiState(tmp_path / "pki")
    jumpbox.generate(inv, state)
    cluster = cpa.fake_cluster(inv)
    cpa.apply(inv, state, cluster)
    cpa.clear(cluster)
    return inv, state, cluster, Etcd(cluster, inv)


def ctx_of(inv, state, cluster, lines=None):
    progress = Progress(lines.append) if lines is not None else QUIET
    return Context(inv, state, connector=cluster.connector, progress=progress)


def stage_on(cluster, node: str, rot: er.Rotation) -> int | None:
    import hashlib

    return rot.stage_of(hashlib.sha256(cluster[node].files[CONFIG].data).hexdigest())


def test_a_full_rotation_goes_through_the_stages_in_order_and_a_rerun_is_a_no_op(env) -> None:
    inv, state, cluster, _etcd = env
    (old,) = encryption.load(state)
    assert old.provider == "secretbox"
    lines: list[str] = []
    seen: list[tuple[str, int | None]] = []  # (node, stage) after every push
    text, out = er.rotate(ctx_of(inv, state, cluster, lines))
    assert "begin: new secretbox:key2 after secretbox:key1" in text
    rot = er.Rotation([old], encryption.load(state)[0])
    for line in lines:
        if f"{CONFIG}: stage " in line:
            seen.append((line.split("]")[0][1:], er.STAGES.index(line.split("stage ")[1].split(" ")[0])))
    assert seen == [(c, s) for s in (er.ADDED, er.FIRST, er.DROPPED) for c in sorted(cpa.CONTROLLERS)] or \
        sorted(seen) == sorted((c, s) for s in (er.ADDED, er.FIRST, er.DROPPED) for c in cpa.CONTROLLERS)
    assert [s for _, s in seen] == sorted(s for _, s in seen), "a stage begins only after the last one everywhere"
    # one apiserver restarted at a time, each back in rotation before the next, three rolls
    restarts = [e.split(":")[0] for e in cluster.log if e.endswith("restart kube-apiserver")]
    assert restarts == list(cpa.CONTROLLERS) * 3
    log = [e for e in cluster.log if "restart kube-apiserver" in e or "lb controller-" in e]
    for i, c in enumerate(list(cpa.CONTROLLERS) * 3):
        assert log[3 * i:3 * i + 3] == [f"lb-0: lb {c} drain", f"{c}: restart kube-apiserver", f"lb-0: lb {c} ready"]
    assert [stage_on(cluster, c, rot) for c in cpa.CONTROLLERS] == [er.DROPPED] * 3
    assert encryption.load(state) == [rot.new] and rot.new.label == "secretbox:key2"
    assert "rewrite every Secret: skipped: stand-in" in "\n".join(out.lines)
    assert not any("rewrite every Secret: ok" in line for line in out.lines)
    assert yaml.safe_load(er.state_file(state).read_text()) == {"done": "secretbox:key2"}
    assert rot.new.secret not in "\n".join(lines + out.lines) + text
    cpa.clear(cluster)
    again, _out2 = er.rotate(ctx_of(inv, state, cluster))
    assert again.startswith("nothing to do: every apiserver (3) encrypts with secretbox:key2")
    assert not [n for n in cluster.nodes.values() if n.commands]


def test_a_dry_run_lists_the_steps_and_changes_nothing(env) -> None:
    inv, state, cluster, _ = env
    before = state.encryption_config.read_bytes()
    text, _ = er.rotate(ctx_of(inv, state, cluster), dry_run=True)
    assert "stage added: push" in text and "stage first: push" in text and "stage dropped: push" in text
    assert "kubectl get secrets -A -o json | kubectl replace -f -" in text
    assert text.count("restart kube-apiserver (drain") == 9
    assert state.encryption_config.read_bytes() == before and not er.state_file(state).exists()
    assert not [n for n in cluster.nodes.values() if n.commands]


@pytest.mark.parametrize("stop_after", [1, 3, 5, 7, 9, 12, 14, 17, 19])
def test_an_interrupted_rotation_resumes_at_the_step_the_nodes_show(env, stop_after) -> None:
    inv, state, cluster, _ = env
    steps: list[str] = []

    def count(line: str) -> None:
        steps.append(line)
        if len(steps) == stop_after:
            procedure.interrupt()  # Ctrl-C: honoured once this step is done

    ctx = Context(inv, state, connector=cluster.connector, progress=Progress(count))
    with pytest.raises(HardwayError, match=r"interrupted .*to finish, run `invoke rotate-encryption-key`"):
        er.rotate(ctx, before=lambda p: setattr(p, "progress", Progress(count)))
    done_first = len([s for s in steps if "restart kube-apiserver (drain" in s])  # begun, so finished
    cpa.clear(cluster)
    text, _ = er.rotate(ctx_of(inv, state, cluster))
    assert text.splitlines()[1].split("] ")[1].startswith("resume: secretbox:key2 replaces secretbox:key1")
    # no apiserver restarted twice for one stage: the two runs together make exactly three rolls
    again = len([e for e in cluster.log if e.endswith("restart kube-apiserver")])
    assert done_first + again == 9, (done_first, again, text)
    rot_keys = encryption.load(state)
    assert [k.label for k in rot_keys] == ["secretbox:key2"]


def test_each_stage_is_read_from_the_nodes_configs(env) -> None:
    inv, state, cluster, _ = env
    (old,) = encryption.load(state)
    rot = er.Rotation([old], encryption.new_key("secretbox", [old]))
    ctx = ctx_of(inv, state, cluster)
    views = er.place(rot, er.look(ctx))
    assert [v.stage for v in views] == [er.START] * 3
    assert [(a.kind, a.stage, a.nodes) for a in er.pending(rot, views)][:3] == [
        ("push", er.ADDED, cpa.CONTROLLERS), ("roll", er.ADDED, cpa.CONTROLLERS), ("verify", er.ADDED, ())]
    # controller-0 got stage "added" and was restarted; controller-1 got it, not restarted; controller-2 nothing
    for name in cpa.CONTROLLERS[:2]:
        node = cluster[name]
        node.files[CONFIG].data = rot.data(er.ADDED)
        node.files[CONFIG].ctime = node.tick()
    cluster["controller-0"].services["kube-apiserver"].started = cluster["controller-0"].tick()
    views = er.place(rot, er.look(ctx))
    assert [(v.stage, v.stale) for v in views] == [(er.ADDED, False), (er.ADDED, True), (er.START, False)]
    assert [(a.kind, a.nodes) for a in er.pending(rot, views)][:3] == [
        ("push", ("controller-2",)), ("roll", ("controller-1", "controller-2")), ("verify", ())]
    # all on "first" and fresh, rewrite verified: only the guard, the drop and its roll are left
    for name in cpa.CONTROLLERS:
        node = cluster[name]
        node.files[CONFIG].data = rot.data(er.FIRST)
        node.services["kube-apiserver"].started = node.tick()
    rot.rewritten = True
    kinds = [(a.kind, a.stage) for a in er.pending(rot, er.place(rot, er.look(ctx)))]
    assert kinds == [("guard", er.DROPPED), ("push", er.DROPPED), ("roll", er.DROPPED), ("verify", er.DROPPED)]
    cluster["controller-1"].files[CONFIG].data = b"edited by hand\n"
    with pytest.raises(HardwayError, match=r"controller-1: .* is none of this rotation's stages"):
        er.place(rot, er.look(ctx))


def test_a_key_still_encrypting_a_secret_is_never_dropped(env) -> None:
    inv, state, cluster, etcd = env
    (old,) = encryption.load(state)
    etcd.values["/registry/secrets/default/kept"] = old.prefix + b"\x00ciphertext"
    etcd.values["/registry/secrets/default/plain"] = b"k8s\x00\n\x0cv1\x12\x06Secret"  # stored before encryption
    with pytest.raises(HardwayError) as err:
        er.rotate(ctx_of(inv, state, cluster))
    msg = str(err.value)
    assert "2 Secret(s) in etcd are not under secretbox:key2 (1 under identity, 1 under secretbox:key1" in msg
    assert "kubectl get secrets -A -o json | kubectl replace -f -" in msg and "resumes here" in msg
    rot, _ = er.load_rotation(state)
    assert rot is not None and not rot.rewritten
    assert {stage_on(cluster, c, rot) for c in cpa.CONTROLLERS} == {er.FIRST}, "the old key is still there"
    assert encryption.load(state) == [rot.new, old]
    # the guard right before the drop catches a Secret under the old key even after a verified rewrite
    rot.rewritten = True
    er.save_rotation(state, rot)
    with pytest.raises(HardwayError, match="before dropping secretbox:key1: 2 Secret"):
        er.rotate(ctx_of(inv, state, cluster))
    assert {stage_on(cluster, c, rot) for c in cpa.CONTROLLERS} == {er.FIRST}
    # rewritten (by hand, as the message says): the re-run resumes at the guard and drops the key
    etcd.values = {k: rot.new.prefix + b"\x00new" for k in etcd.values}
    cpa.clear(cluster)
    text, _out = er.rotate(ctx_of(inv, state, cluster))
    assert "stage added" not in text and "stage first" not in text and "rewrite every" not in text
    assert {stage_on(cluster, c, rot) for c in cpa.CONTROLLERS} == {er.DROPPED}


def test_a_changed_provider_goes_the_same_way(env, tmp_path) -> None:
    inv, state, cluster, _ = env
    (old,) = encryption.load(state)
    text = cpa.ROOT.joinpath("inventory", "sample.yaml").read_text()
    from hardway import inventory

    aescbc = inventory.parse(text.replace("provider: secretbox", "provider: aescbc"), str(inv.path),
                             base=cpa.ROOT / "inventory")
    aescbc = type(aescbc)(**{**aescbc.__dict__, "binaries": inv.binaries})
    with pytest.raises(HardwayError, match="invoke rotate-encryption-key"):
        jumpbox.generate(aescbc, state)  # invoke pki refuses to overwrite: it names the rotation
    _, _out = er.rotate(ctx_of(aescbc, state, cluster))
    (new,) = encryption.load(state)
    assert (new.provider, new.name) == ("aescbc", "key2") and old.provider == "secretbox"
    assert jumpbox.generate(aescbc, state)  # now the inventory and the config agree
