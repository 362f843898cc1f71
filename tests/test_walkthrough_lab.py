"""`invoke chapter`'s typed commands, typed into fresh lab nodes: they must make exactly the files the
apply makes (sha256, mode, owner), and a working chapter the apply then finds nothing to change in.

The commands run as printed: the jumpbox blocks with bash on this host (scp with the lab's key and
known_hosts), the node blocks over SSH as one script that stops at the first failing command.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hardway import jumpbox, remote, services
from hardway.chapters import Context
from hardway.chapters.control_plane import CHAPTER as CONTROL_PLANE
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.pod_routes import CHAPTER as POD_ROUTES
from hardway.chapters.workers import CHAPTER as WORKERS
from hardway.checks import FAIL, format_table
from hardway.facts import file_hashes, file_stats, gather
from hardway.remote import QUIET
from hardway.state import PkiState
from hardway.walkthrough import manual, view
from hardway.walkthrough.progress import DONE, NOT_STARTED, read_records, states
from hardway.walkthrough.tutorial import find

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def walk(lab_factory):  # -> Context over a fresh lab: 1 controller, 1 worker, the load balancer
    lab = lab_factory(controllers=1, workers=1, loadbalancers=1, prefix="w")
    state = PkiState(lab.state_dir / "pki")
    jumpbox.generate(lab.inventory, state)
    ctx = Context(lab.inventory, state, cache_dir=ROOT / "build" / "cache", progress=QUIET)
    yield ctx
    shutil.rmtree(view.build_dir(ctx), ignore_errors=True)  # what the typed `invoke render` wrote


def type_by_hand(ctx: Context, chapter, planned=None, steps=None) -> None:
    """Every block of the manual view, as printed, in its order."""
    for section in view.manual_sections(ctx, chapter, planned, steps):
        if section.where == "jumpbox":
            done = subprocess.run(["bash", "-c", manual.script(section)], capture_output=True, text=True, timeout=120,
                                  cwd=ROOT)
            assert done.returncode == 0, f"{section.title}: {done.stderr}"
            continue
        r = remote.connect(ctx.inv, ctx.inv.node(section.where))
        text = manual.script(section).encode()
        try:  # pasted into a shell: the script is bash's stdin, as if typed
            r.feed("bash -s", lambda out, text=text: out.write(text), timeout=120)
        finally:
            r.close()


def on_disk(ctx: Context, chapter, planned=None) -> dict[str, dict[str, tuple]]:
    """node -> path -> (sha256, mode, owner, group) as the node holds it."""
    out = {}
    for node in chapter.targets(ctx.inv):
        paths = [f.path for f in (planned or {}).get(node.name) or ctx.files(chapter, node)]
        r = remote.connect(ctx.inv, node)
        try:
            h, s = file_hashes(paths), file_stats(paths)
            got = gather(r, [h, s])
        finally:
            r.close()
        out[node.name] = {p: (got[h][p], *((got[s][p].mode, got[s][p].owner, got[s][p].group) if got[s][p] else ()))
                          for p in paths}
    return out


def planned(ctx: Context, chapter, surveyed=None) -> dict[str, dict[str, tuple]]:
    return {n.name: {f.path: (f.sha256, f.mode, f.owner, f.group)
                     for f in (surveyed or {}).get(n.name) or ctx.files(chapter, n)}
            for n in chapter.targets(ctx.inv)}


def test_list_before_anything_then_typed_etcd_matches_the_apply(walk):
    ctx = walk
    before = {s.slug: s for s in states(ctx)}
    assert before["compute-resources"].state == DONE, before["compute-resources"].detail
    assert before["certificate-authority"].state == DONE
    assert before["etcd"].state == NOT_STARTED and before["etcd"].results == []  # no record names it: no checks run
    assert before["cleanup"].state == DONE  # nothing deployed yet

    type_by_hand(ctx, ETCD)
    assert on_disk(ctx, ETCD) == planned(ctx, ETCD)
    node = ctx.inv.controllers[0]
    r = remote.connect(ctx.inv, node)
    try:
        services.wait_active(r, ["etcd"], 60)
    finally:
        r.close()
    # hardway's own apply afterwards: every file already holds the planned bytes, nothing is written or restarted
    report = ETCD.apply(ctx)
    assert report.written == {node.name: []} and report.restarted == {}, report.summary()
    assert not [r for r in report.results if r.status == FAIL], format_table(report.results)
    after = states(ctx, [find("etcd")])[0]
    assert after.state == DONE, after.detail
    assert "etcd" in read_records(ctx).chapters_on(node.name)


def test_typed_control_plane_matches_the_apply(walk):
    ctx = walk
    type_by_hand(ctx, CONTROL_PLANE)
    assert on_disk(ctx, CONTROL_PLANE) == planned(ctx, CONTROL_PLANE)
    report = CONTROL_PLANE.apply(ctx)
    assert all(not v for v in report.written.values()), report.summary()
    assert not [r for r in report.results if r.status == FAIL], format_table(report.results)
    assert states(ctx, [find("8")])[0].state == DONE


def test_typed_workers_with_their_repairs_then_pod_routes_match_the_apply(walk):
    """The workers' files are planned from each node's facts (resolvConf) and --fix adds repairs (a fresh
    node forwards no IPv4): the typed view, taken from the survey, holds both."""
    ctx = dataclasses.replace(walk, fix=True)
    seen = view.changes(ctx, WORKERS)
    assert any(c.what == "step" for c in seen.rows)  # the repairs, each with its command
    type_by_hand(ctx, WORKERS, seen.planned, seen.steps)
    assert on_disk(ctx, WORKERS, seen.planned) == planned(ctx, WORKERS, seen.planned)
    report = WORKERS.apply(ctx)
    assert all(not v for v in report.written.values()) and not report.steps, report.summary()

    seen = view.changes(ctx, POD_ROUTES)
    type_by_hand(ctx, POD_ROUTES, seen.planned, seen.steps)
    report = POD_ROUTES.apply(ctx)
    assert all(not v for v in report.written.values()) and not report.steps, report.summary()
    assert not [r for r in report.results if r.status == FAIL], format_table(report.results)


def test_changes_show_a_hand_edit_as_a_diff_and_a_key_only_as_differs(walk):
    ctx = walk
    node = ctx.inv.controllers[0]
    r = remote.connect(ctx.inv, node)
    try:
        r.run("sed -i 's/--heartbeat-interval=100/--heartbeat-interval=250/' /etc/systemd/system/etcd.service && "
              "printf x >> /etc/etcd/etcd.key")
        got = view.changes(ctx, ETCD)
        rows = {(c.what, c.path): c.detail for c in got.rows}
        assert rows[("differs", "/etc/etcd/etcd.key")] == "(secret, 0600, differs)"
        assert ("restart", "etcd") in rows
        (diff,) = [d for n, p, d in got.diffs if p == "/etc/systemd/system/etcd.service"]
        assert "-  --heartbeat-interval=250 \\" in diff and "+  --heartbeat-interval=100 \\" in diff
        assert all("BEGIN" not in d and "PRIVATE" not in d for _, _, d in got.diffs)
    finally:
        r.close()
    report = ETCD.apply(ctx)  # the repair: the planned files back, etcd restarted on them
    assert sorted(report.written[node.name]) == ["/etc/etcd/etcd.key", "/etc/systemd/system/etcd.service"]
    left = [c for c in view.changes(ctx, ETCD).rows if not (c.what == "preflight" and c.detail.startswith("warn"))]
    assert left == []  # (a slow disk's warning may stay: this host's disk, not the chapter's)


def test_cli_next_applies_the_first_chapter_not_done_then_list_grades_it(lab_factory):
    """On a fresh lab with its PKI made, chapters 1-6 are done: `--next` is etcd's bootstrap."""
    lab = lab_factory(controllers=1, prefix="w")
    pki_dir = lab.state_dir / "pki"
    jumpbox.generate(lab.inventory, PkiState(pki_dir))
    common = ["--inventory", str(lab.inventory_path), "--pki-dir", str(pki_dir)]

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", "chapter", *args, *common], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    done = invoke("--next")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "next: 07 Bootstrapping the etcd cluster" in done.stderr
    assert done.stdout.rstrip().endswith("07 etcd: done (1 ok)") or "07 etcd: done" in done.stdout, done.stdout
    graded = json.loads(invoke("--list", "--json").stdout)
    by_slug = {c["slug"]: c for c in graded["chapters"]}
    assert by_slug["etcd"]["state"] == DONE and by_slug["etcd"]["results"]
    assert by_slug["compute-resources"]["state"] == DONE and by_slug["cleanup"]["state"] == NOT_STARTED
    page = json.loads(invoke("7", "--only", "changes", "--json").stdout)
    left = [c for c in page["changes"]["changes"] if c["what"] != "preflight"]
    assert left == [] and page["state"]["state"] == DONE
