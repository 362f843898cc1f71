"""Pushes on real nodes: a run killed mid-push leaves no staging behind and no target half-written;
the next run sweeps what a killed run left and converges. Real sshd, tar and systemd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardway import deploy, jumpbox, remote
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.facts import file_hashes, gather
from hardway.plan import chapter_files
from hardway.state import PkiState

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_node(lab_factory, tmp_path_factory):  # -> (Lab, PkiState)
    the_lab = lab_factory(controllers=1, workers=0)
    state = PkiState(tmp_path_factory.mktemp("pki") / the_lab.name)
    jumpbox.generate(the_lab.inventory, state)
    return the_lab, state


def staging_on(inv, node) -> list[str]:
    r = remote.connect(inv, node)
    try:
        return r.run(f"ls -1 {deploy.STAGING} 2>/dev/null; true").stdout.split()
    finally:
        r.close()


def test_a_run_killed_mid_push_leaves_no_staging_and_no_half_written_file(one_node) -> None:
    the_lab, state = one_node
    inv = the_lab.inventory
    node = inv.controllers[0]
    planned = {f.path: f.sha256 for f in chapter_files(inv, node, state, "etcd")}
    watcher = remote.connect(inv, node)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(ROOT), "bootstrap-etcd", "--inventory",
                             str(the_lab.inventory_path), "--pki-dir", str(state.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline and not seen:  # the moment the stream has begun to land
            seen = watcher.run(f"ls {deploy.STAGING}/*/ 2>/dev/null | head -n 1; true").stdout.split()
        assert seen, "the push never started"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1.0)  # the node notices the closed stream; its trap removes the staging dir
        left = watcher.run(f"ls -A {deploy.STAGING} 2>/dev/null; true").stdout.split()
        assert left == [], f"staging left behind: {left}"
        hashes = gather(watcher, [file_hashes(list(planned))])[file_hashes(list(planned))]
        for path, have in hashes.items():
            assert have in (None, planned[path]), f"{path} is half-written"
        assert not watcher.run("ls /etc/etcd/*.hardway-new /usr/local/bin/*.hardway-new 2>/dev/null; true").stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        watcher.close()
    report = ETCD.apply(Context(inv, state, progress=remote.QUIET))  # and the next run converges
    assert not [r for r in report.results if r.status == "fail"]
    assert staging_on(inv, node) == []


def test_the_next_run_sweeps_what_a_killed_run_left_and_only_that(one_node) -> None:
    the_lab, state = one_node
    inv = the_lab.inventory
    node = inv.controllers[0]
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid of this jumpbox that is no longer running
    killed_run = f"run-{deploy._HOST}-{dead.pid}-{int(time.time())}-deadbeef"
    someone_else = f"run-otherbox-77-{int(time.time())}-cafebabe"  # another jumpbox, recent: not ours to judge
    r = remote.connect(inv, node)
    try:
        r.run(f"install -d -m 0700 {deploy.STAGING}/{killed_run} {deploy.STAGING}/{someone_else} && "
              f"(umask 077; echo 'PRIVATE KEY' > {deploy.STAGING}/{killed_run}/9)")
        r.run("rm -f /etc/etcd/ca.crt")  # something to push, so the run stages and sweeps
        ETCD.apply(Context(inv, state, progress=remote.QUIET))
        assert staging_on(inv, node) == [someone_else]
    finally:
        r.run(f"rm -rf {deploy.STAGING}/{someone_else}")
        r.close()
