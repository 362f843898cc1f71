"""rotate-encryption-key on real nodes: 3 controllers (real sshd, systemd, etcd, HAProxy; stand-in
apiservers that load and check every config they are given) behind the load balancer.

The roll is interrupted in its second roll, resumed with the command it prints, stopped by the guard
while etcd still holds a Secret under the old key (put there with etcdctl: the stand-in stores none),
resumed again once that value is gone, and a last run is a no-op. A client polls /readyz through the
load balancer the whole time and never sees a failure.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hardway import encryption, procedure
from hardway import encryption_rotation as er
from hardway.chapters import Context
from hardway.chapters.control_plane import CHAPTER as CP
from hardway.chapters.etcd.files import ctl
from hardway.checks import FAIL
from hardway.errors import HardwayError
from hardway.facts import unit_states
from hardway.remote import QUIET, Progress
from tests.test_bootstrap_etcd import run_on
from tests.test_control_plane_roll import Poller, control_plane_lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
LEGACY = "/registry/secrets/default/legacy"


@pytest.fixture(scope="module")
def enc_lab(lab_factory, tmp_path_factory):
    return control_plane_lab(lab_factory, tmp_path_factory, "enc")


def stages(inv, rot: er.Rotation) -> dict[str, int | None]:
    out = {}
    for c in inv.controllers:
        sha = run_on(inv, c, f"sha256sum {er.CONFIG}").stdout.split()[0]
        out[c.name] = rot.stage_of(sha)
    return out


def started(inv) -> dict[str, int]:
    """Each apiserver's ActiveEnterTimestamp (the node clock is the host's: comparable)."""
    from hardway.facts import gather
    from hardway.remote import connect

    out = {}
    for c in inv.controllers:
        r = connect(inv, c)
        try:
            f = unit_states(["kube-apiserver"])
            out[c.name] = gather(r, [f])[f]["kube-apiserver"].since or 0
        finally:
            r.close()
    return out


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """A command hardway printed, run as printed (``invoke`` from this checkout)."""
    words = shlex.split(command)
    assert words[0] == "invoke", command
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *words[1:]], capture_output=True,
                          text=True, timeout=600)


def test_rotation_interrupted_guarded_resumed_and_then_a_no_op(enc_lab) -> None:
    the_lab, state = enc_lab
    inv = the_lab.inventory
    c0 = inv.controllers[0]
    (old,) = encryption.load(state)
    assert old.label == "secretbox:key1", "new clusters get secretbox"
    # a Secret stored under the old key (what a real apiserver would have written before the rotation)
    put = ctl(inv, c0, f"put {LEGACY} {shlex.quote(old.prefix.decode() + 'ciphertext')}")
    assert run_on(inv, c0, put).ok
    resume = f"invoke rotate-encryption-key --inventory {the_lab.inventory_path} --pki-dir {state.root}"
    # 0. the dry run, as a user types it: every step, nothing changed
    before_config = state.encryption_config.read_bytes()
    proc = run_printed(resume + " --dry-run")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("dry run: nothing was changed"), proc.stdout
    assert proc.stdout.count("restart kube-apiserver (drain") == 9 and "kubectl replace -f -" in proc.stdout
    assert state.encryption_config.read_bytes() == before_config and not er.state_file(state).exists()

    poller = Poller(str(inv.api_endpoint.address), inv.api_endpoint.port, state)
    poller.start()
    said: list[str] = []
    try:
        # 1. interrupted (Ctrl-C) while the second roll restarts controller-0
        def stop_in_second_roll(line: str) -> None:
            said.append(line)
            if "stage first: restart kube-apiserver" in line and f"[{c0.name}]" in line:
                procedure.interrupt()

        ctx = Context(inv, state, progress=Progress(stop_in_second_roll))
        before = started(inv)
        with pytest.raises(HardwayError) as err:
            er.rotate(ctx, resume=resume)
        msg = str(err.value)
        assert "interrupted (Ctrl-C)" in msg and f"to finish, run `{resume}`" in msg, msg
        rot, _ = er.load_rotation(state)
        assert rot is not None and rot.new.label == "secretbox:key2"
        assert stages(inv, rot) == {c.name: er.FIRST for c in inv.controllers}
        after = started(inv)
        # the first roll restarted all three, one after another; the second only controller-0 so far
        names = [c.name for c in inv.controllers]
        assert [n for n, t in sorted(after.items(), key=lambda kv: kv[1])] == [*names[1:], names[0]]
        assert all(after[c.name] > before[c.name] for c in inv.controllers)
        first_roll = [line for line in said if "stage added: restart kube-apiserver" in line]
        assert [line.split("]")[0][1:] for line in first_roll] == [c.name for c in inv.controllers]

        # 2. the printed command resumes: the rest of the second roll, then the guard stops it (stand-in:
        #    nothing can rewrite the legacy value), and the old key stays
        proc = run_printed(resume)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        out = proc.stdout + proc.stderr
        assert "resume: secretbox:key2 replaces secretbox:key1" in out
        assert "stage added: push" not in out and "stage first: push" not in out, out
        restarted = [ln.split("]")[0][1:] for ln in out.splitlines()
                     if ln.startswith("[") and "stage first: restart kube-apiserver" in ln]  # as done, not planned
        assert restarted == [c.name for c in inv.controllers[1:]], out
        assert "rewrite every Secret: skipped: stand-in" in out
        assert "rewrite every Secret: ok" not in out
        assert f"1 Secret(s) in etcd are not under secretbox:key2 (1 under secretbox:key1; e.g. {LEGACY})" in out
        assert f"then re-run `{resume}`: it resumes here" in out
        assert stages(inv, rot) == {c.name: er.FIRST for c in inv.controllers}
        assert [k.label for k in encryption.load(state)] == ["secretbox:key2", "secretbox:key1"]

        # 3. the value is gone (rewritten by hand, as the message says): the same command finishes
        assert run_on(inv, c0, ctl(inv, c0, f"del {LEGACY}")).ok
        before = started(inv)
        proc = run_printed(resume)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert "stage first: restart" not in out and "stage dropped: push" in out
        assert "etcd: ok: all 0 Secret(s) stored under secretbox:key2" in out
        assert "stage dropped: ok: every apiserver (3) runs secretbox:key2" in out
        rot_after = er.Rotation(rot.old, rot.new)
        assert stages(inv, rot_after) == {c.name: er.DROPPED for c in inv.controllers}
        after = started(inv)
        assert [n for n, t in sorted(after.items(), key=lambda kv: kv[1])] == [c.name for c in inv.controllers]
        assert all(after[c.name] > before[c.name] for c in inv.controllers)
        assert encryption.load(state) == [rot.new]

        # 4. a re-run is a no-op
        before = started(inv)
        proc = run_printed(resume)
        assert proc.returncode == 0 and proc.stdout.startswith("nothing to do: every apiserver (3) encrypts with "
                                                                "secretbox:key2"), proc.stdout + proc.stderr
        assert started(inv) == before
    finally:
        poller.stop.set()
        poller.join(timeout=30)
    assert poller.failures == [], f"{len(poller.failures)} failed polls of {poller.ok + len(poller.failures)}: " \
                                  f"{poller.failures[:5]}"
    assert poller.ok > 50, poller.ok
    # every apiserver (a stand-in that parses every key of its config) reports it loaded the new config
    for c in inv.controllers:
        journal = run_on(inv, c, "journalctl -u kube-apiserver -o cat -n 400").stdout
        assert "providers secretbox, identity; every key well formed" in journal
    results = CP.verify(Context(inv, state, progress=QUIET))
    assert not [r for r in results if r.status == FAIL], [r for r in results if r.status == FAIL]
    # the audit log is written on every controller (HAProxy's checks and the polls above are audited), and
    # the aggregation layer's flags and files agree
    for check in ("audit-log", "aggregation"):
        assert sorted(r.node for r in results if r.check == check and r.status == "ok") == \
            [c.name for c in inv.controllers], [r for r in results if r.check == check]
    digest = hashlib.sha256(state.encryption_config.read_bytes()).hexdigest()
    assert {run_on(inv, c, f"sha256sum {er.CONFIG}").stdout.split()[0] for c in inv.controllers} == {digest}
