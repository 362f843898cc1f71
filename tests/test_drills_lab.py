"""Every failure drill on a lab of its own (3 controllers, 2 workers, the load balancer, every chapter up):
break it → verify fails with exactly that cause (the drill's check names its cause and fix; nothing
unrelated fails) → the fix, run as the hint prints it → verify passes. Each test leaves the lab healthy for
the next (its undo runs whatever happens).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardway import checks, drills, jumpbox
from hardway.chapters import REGISTRY, Context, verifiable
from hardway.checks import FAIL
from hardway.remote import QUIET
from hardway.state import PkiState

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


class Env:
    def __init__(self, lab, state: PkiState) -> None:
        self.lab, self.inv, self.state = lab, lab.inventory, state
        self.drills = drills.Env(self.inv, state, lab)

    def verify(self) -> list:
        ctx = Context(self.inv, self.state, progress=QUIET)
        return checks.run_checks([c for ch in verifiable() for c in ch.checks(ctx)])

    def invoke(self, *args: str, inventory: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--inventory", str(self.lab.inventory_path), "--pki-dir", str(self.state.root)] if inventory else []
        return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args, *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    def healthy(self, within: float = 60.0) -> list:
        """verify until nothing fails (a restarted member or apiserver takes a moment); the last results."""
        deadline = time.monotonic() + within
        while True:
            results = self.verify()
            bad = [r for r in results if r.status == FAIL]
            if not bad or time.monotonic() > deadline:
                assert not bad, "\n".join(f"{r.chapter} {r.check} {r.node}: {r.detail} | {r.hint}" for r in bad)
                return results
            time.sleep(2)


@pytest.fixture(scope="module")
def env(lab_factory) -> Env:
    lab = lab_factory(3, 2, loadbalancers=1)
    state = PkiState(lab.state_dir / "pki" / lab.inventory.cluster_name)
    jumpbox.generate(lab.inventory, state)
    for chapter in REGISTRY:
        if chapter.applied_by_task and chapter.name != "smoke":
            ctx = Context(lab.inventory, state, progress=QUIET)
            ctx.fix = chapter.fixable  # a fresh worker has ip_forward 0: what `bootstrap-workers --fix` is for
            report = chapter.apply(ctx)
            assert not [r for r in report.results if r.status == FAIL], report.results
    e = Env(lab, state)
    e.healthy()
    return e


def commands(fix: str) -> list[list[str]]:
    """The `invoke ...` commands a fix names, in order, as words."""
    return [m.split() for m in re.findall(r"`invoke ([^`]+)`", fix)]


def failing(results: list) -> list:
    return [r for r in results if r.status == FAIL]


@pytest.mark.parametrize("name", [d.name for d in drills.DRILLS])
def test_drill(env: Env, name: str) -> None:
    drill = drills.by_name(name)
    cause, fix = drill.says(env.inv)
    node = drill.target(env.inv).name
    t0 = time.monotonic()
    done = drills.break_lab(env.drills, name)
    passed = False
    try:
        deadline = time.monotonic() + 30
        while True:  # the broken service needs a moment to fail (a restart, HAProxy's checks)
            bad = failing(env.verify())
            named = [r for r in bad if r.check == drill.check and cause in r.detail]
            if named or time.monotonic() > deadline:
                break
            time.sleep(1)
        shown = "\n".join(f"{r.chapter} {r.check} {r.node}: {r.detail} | {r.hint}" for r in bad)
        assert named, f"{done.what}\nverify did not name {cause!r} in check {drill.check}:\n{shown}"
        assert all(r.chapter == drill.chapter for r in named) and all(fix in r.hint for r in named), shown
        assert any(r.node in (node, "endpoint") for r in named), shown
        unrelated = [r for r in bad if r.check not in (drill.check, *drill.also)]
        assert not unrelated, f"checks unrelated to {name} failed:\n{shown}"
        broken = time.monotonic()
        if drill.runnable:
            for words in commands(fix):  # the fix exactly as verify printed it
                ran = env.invoke(*words)
                assert ran.returncode == 0, f"invoke {' '.join(words)}:\n{ran.stdout[-2000:]}{ran.stderr}"
        else:  # a faster disk cannot be bought in a test: the drill's undo stands in for it
            drills.undo(env.drills, name)
        env.healthy()
        print(f"\n{name}: broken and named in {broken - t0:.1f}s, fixed and verified in "
              f"{time.monotonic() - broken:.1f}s")
        passed = True
    finally:
        if name == "stub-resolver" or not passed:
            drills.undo(env.drills, name)  # stub-resolver: the fix leaves the lab on systemd-resolved's file
    if name == "stub-resolver":
        env.healthy()


def test_lab_break_cli_lists_refuses_and_breaks(env: Env) -> None:
    lab = env.lab
    flags = ["--name", lab.name, "--pki-dir", str(env.state.root)]
    listed = env.invoke("lab.break", "--list", "--json", *flags, inventory=False)
    assert listed.returncode == 0, listed.stderr
    table = json.loads(listed.stdout)["drills"]
    assert [r["drill"] for r in table] == [d.name for d in drills.DRILLS]
    stale = next(r for r in table if r["drill"] == "stale-data-dir")
    assert stale["node"] == env.inv.controllers[-1].name
    assert stale["fix"] == f"`invoke etcd.replace {env.inv.controllers[-1].name}`"

    unknown = env.invoke("lab.break", "no-such-drill", *flags, inventory=False)
    assert unknown.returncode == 1 and unknown.stderr.strip().startswith("error: no drill named 'no-such-drill'")
    no_lab = env.invoke("lab.break", "member-stopped", "--name", "nosuchlab", inventory=False)
    assert no_lab.returncode == 1 and len(no_lab.stderr.strip().splitlines()) == 1, no_lab.stderr

    broke = env.invoke("lab.break", "member-stopped", *flags, inventory=False)
    assert broke.returncode == 0, broke.stderr
    node = env.inv.controllers[-1].name
    assert f"lab.break member-stopped: {node}: etcd stopped" in broke.stdout
    try:
        # a drill needs its chapter up on its node: with etcd stopped there, another etcd drill is refused
        refused = env.invoke("lab.break", "missing-key", *flags, inventory=False)
        assert refused.returncode == 1
        assert refused.stderr.strip() == (f"error: drill missing-key needs chapter etcd up on {node} (etcd is "
                                          "inactive): run `invoke bootstrap-etcd` first")
        said = env.invoke("verify")  # the command lab.break told the learner to run
        assert said.returncode == 1 and "etcd is inactive (stopped)" in said.stdout
    finally:
        undone = env.invoke("lab.break", "member-stopped", *flags, "--undo", inventory=False)
        assert undone.returncode == 0, undone.stderr
    env.healthy()
    # an undo where nothing is broken changes nothing (no member is replaced for nothing)
    idle = env.invoke("lab.break", "stale-data-dir", *flags, "--undo", inventory=False)
    assert idle.returncode == 0, idle.stderr
    assert f"{node}: nothing to undo: /var/lib/etcd holds this cluster's member" in idle.stdout, idle.stdout
