"""The walkthrough without a machine: the tutorial map, the typed commands (quoting, heredocs, order,
no secret ever printed), the states' logic and the task's errors. The typed commands are typed into
real lab nodes by tests/test_walkthrough_lab.py."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Collection

from hardway.chapters import REGISTRY, Context
from hardway.checks import FAIL, OK, SKIP, CheckResult
from hardway.deploy import RECORD, Deployed
from hardway.errors import HardwayError
from hardway.files import File
from hardway.state import PkiState
from hardway.walkthrough import manual, progress, report, tutorial, view
from tasks import walkthrough
from tests.fakes import FakeCluster, FakeFile

ROOT = Path(__file__).resolve().parent.parent

TRICKY = [
    "plain\n",
    "ExecStart=/usr/local/bin/etcd \\\n  --name=a \\\n  --client-cert-auth\n",  # backslash-newline continuations
    "a line with a trailing backslash and space \\ \n  --next\n",
    "echo $HOME ${PATH} $(id -u) `id -u` \"$x\" '$y'\n",
    "EOF\nEOF_1\n  EOF\nend\n",  # the delimiter itself, and its first alternative, as lines
    "percent %% and dollar $$ for systemd\n",
    "tabs\tand unicode: ü — ✓\n",
    "\\\\ two backslashes then newline \\\\\n",
    "last line without newline",  # a heredoc always ends in one: base64
    "crlf\r\nline\r\n",
]


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("text", TRICKY)
def test_heredoc_writes_the_bytes_exactly(tmp_path, text):
    data = text.encode()
    target = tmp_path / "out"
    done = bash(manual.heredoc(str(target), data), tmp_path)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data


def test_heredoc_of_binary_data_is_base64_and_exact(tmp_path):
    data = bytes(range(256)) * 3 + b"\0EOF\n"
    cmd = manual.heredoc(str(tmp_path / "bin"), data)
    assert cmd.startswith("base64 -d > ") and "\0" not in cmd
    assert bash(cmd, tmp_path).returncode == 0
    assert (tmp_path / "bin").read_bytes() == data


def test_unquoted_heredoc_would_break_a_unit_the_quoted_one_keeps(tmp_path):
    """The pitfall the quoted delimiter avoids: unquoted, the shell joins continued lines and expands $."""
    unit = "[Service]\nExecStart=/bin/echo \\\n  $HOME \\\n  --flag\n"
    naive = f"cat > {tmp_path}/naive <<EOF\n{unit}EOF"
    assert bash(naive, tmp_path).returncode == 0
    assert (tmp_path / "naive").read_text() != unit  # what a hand-typed unquoted heredoc does
    assert bash(manual.heredoc(str(tmp_path / "quoted"), unit.encode()), tmp_path).returncode == 0
    assert (tmp_path / "quoted").read_text() == unit


def test_delimiter_never_occurs_as_a_line():
    assert manual.delimiter("a\nb\n") == "EOF"
    assert manual.delimiter("EOF\nEOF_1\n") == "EOF_2"
    assert manual.delimiter("xEOF\nEOF \n") == "EOF"  # only a whole line ends a heredoc


def test_staged_names_tell_files_with_one_basename_apart():
    files = [File("/etc/etcd/ca.crt", 0o644, b"a"), File("/etc/kubernetes/pki/ca.crt", 0o644, b"b"),
             File("/etc/x/unit.service", 0o644, b"c")]
    names = manual.staged_names(files)
    assert names == {"/etc/etcd/ca.crt": "etc-etcd-ca.crt", "/etc/kubernetes/pki/ca.crt": "etc-kubernetes-pki-ca.crt",
                     "/etc/x/unit.service": "unit.service"}


@pytest.fixture(scope="module")
def ctx(inv, state):
    return Context(inv, state)


def node_chapters(ctx):
    return [c for c in REGISTRY if c.targets(ctx.inv)]


def test_no_secret_is_ever_printed_and_each_is_copied_from_its_pki_file(ctx):
    for chapter in node_chapters(ctx):
        sections = view.manual_sections(ctx, chapter)
        text = "\n".join(s.text() for s in sections)
        for node in chapter.targets(ctx.inv):
            src = view.sources(ctx, chapter, node)
            for f in ctx.files(chapter, node):
                if not f.secret:
                    continue
                assert f.data().decode() not in text
                for line in f.data().decode().splitlines():
                    if len(line) > 20:  # a key's base64 body, a kubeconfig's client-key-data
                        assert line not in text, f"{chapter.name}: {f.path} printed"
                assert hashlib.sha256(src[f.path].read_bytes()).hexdigest() == f.sha256
                assert f"{src[f.path]} " in text  # scp'd from there


def test_every_typed_file_lands_byte_for_byte(ctx, tmp_path):
    """Each heredoc of every chapter's node block, run by bash: the bytes the plan holds."""
    for chapter in node_chapters(ctx):
        for node in chapter.targets(ctx.inv):
            files = ctx.files(chapter, node)
            src = view.sources(ctx, chapter, node)
            for f in files:
                if manual.copy_source(f, src) is not None:
                    continue
                out = tmp_path / "f"
                assert bash(manual.heredoc(str(out), f.data()), tmp_path).returncode == 0
                assert out.read_bytes() == f.data(), f"{chapter.name} {node.name} {f.path}"


def test_node_block_order_and_modes(ctx):
    etcd = next(c for c in REGISTRY if c.name == "etcd")
    node = ctx.inv.controllers[0]
    files = ctx.files(etcd, node)
    section = manual.node_section(node, "etcd", files, view.sources(ctx, etcd, node), etcd.node_units(node),
                                  no_block=etcd.no_block_start)
    cmds = [c for c in section.commands if not c.startswith("#")]
    assert re.fullmatch(r"install -d -m 0700 /var/tmp/hardway-walk-etcd-[0-9a-f]{12}", cmds[0]), cmds[0]
    assert cmds[1].startswith("mkdir -p ")
    installs = [c for c in cmds if c.startswith("install -m ")]
    assert len(installs) == len(files)
    for f, c in zip(files, installs, strict=True):
        assert c.startswith(f"install -m {f.mode:04o} -o {f.owner} -g {f.group} ") and c.endswith(f" {f.path}")
    assert cmds[-3:] == ["systemctl daemon-reload", "systemctl enable etcd", "systemctl start --no-block etcd"]
    last_heredoc = max(i for i, c in enumerate(cmds) if c.startswith("cat > "))
    assert last_heredoc < cmds.index(installs[0]) < cmds.index("systemctl daemon-reload")


def test_jumpbox_block_uses_the_inventory_ssh_settings(ctx):
    etcd = next(c for c in REGISTRY if c.name == "etcd")
    node = ctx.inv.controllers[0]
    section = manual.jumpbox_section(ctx.inv, node, "etcd", ctx.files(etcd, node), view.sources(ctx, etcd, node))
    assert section is not None
    for c in section.commands:
        assert f"UserKnownHostsFile={ctx.inv.ssh.known_hosts}" in c and "StrictHostKeyChecking=yes" in c
        assert f"{ctx.inv.ssh.user}@{node.address}" in c


# --- the map and the states -------------------------------------------------------------------


def test_thirteen_chapters_in_order_each_node_chapter_once():
    assert [t.number for t in tutorial.CHAPTERS] == list(range(1, 14))
    behind = [t.chapter().name for t in tutorial.CHAPTERS if t.kind in (tutorial.NODES, tutorial.CLUSTER)]
    assert behind == [c.name for c in REGISTRY if c.applied_by_task]  # every node chapter, in the registry's order
    assert {t.chapter().name for t in tutorial.CHAPTERS if t.kind == tutorial.PKI_PART} == {"pki"}


def test_every_chapter_has_its_page():
    for t in tutorial.CHAPTERS:
        assert (ROOT / t.doc).is_file(), t.doc


@pytest.mark.parametrize(("which", "number"), [("7", 7), ("07", 7), ("etcd", 7), ("bootstrap-etcd", 7),
                                               ("control-plane", 8), ("smoke", 12), ("cleanup", 13), ("pki", 4)])
def test_find(which, number):
    assert tutorial.find(which).number == number


def test_find_unknown_names_the_choices():
    with pytest.raises(HardwayError, match=r"no tutorial chapter '99'; chapters: 1 \(prerequisites\)"):
        tutorial.find("99")


def r(status: str, detail: str = "d") -> CheckResult:
    return CheckResult("etcd", "etcd", "controller-0", status, detail)


def test_judged():
    assert progress.judged([], started=False, why_not="nothing") == (progress.NOT_STARTED, "nothing")
    assert progress.judged([r(OK), r(OK)]) == (progress.DONE, "2 ok")
    assert progress.judged([r(OK), r(SKIP)]) == (progress.DONE, "1 ok, 1 skipped (stand-in)")
    assert progress.judged([r(SKIP, "skipped: stand-in")])[0] == progress.SKIPPED
    state, detail = progress.judged([r(OK), r(FAIL, "member down")])
    assert state == progress.FAILING and "controller-0: etcd: member down" in detail


def row(n: int, slug: str, state: str) -> progress.ChapterState:
    return progress.ChapterState(n, slug, slug, state, "", "")


def test_next_is_the_first_not_done_never_cleanup():
    rows = [row(1, "a", progress.DONE), row(2, "b", progress.SKIPPED), row(3, "c", progress.FAILING),
            row(4, "d", progress.NOT_STARTED)]
    assert progress.first_not_done(rows).number == 3
    assert progress.first_not_done([row(12, "x", progress.DONE), row(13, "cleanup", progress.NOT_STARTED)]) is None
    assert "next: 03 c" in report.list_text(rows)


def test_records_decide_started(ctx):
    rec = progress.Records({"controller-0": {"/etc/etcd/ca.crt": Deployed("x", 0o644, "root", "root", "etcd")},
                            "worker-0": None}, {"worker-0": "unreachable"})
    assert rec.holds("etcd", ["controller-0", "controller-1"]) and not rec.holds("workers", ["worker-0"])


def test_changes_never_diff_a_secret():
    secret = File("/etc/etcd/etcd.key", 0o600, b"KEY\n", secret=True)
    unit = File("/etc/systemd/system/etcd.service", 0o644, b"[Unit]\n")
    assert view.kind(secret) == "secret" and not view._diffable(secret)
    assert view.kind(unit) == "unit" and view._diffable(unit)


# --- the task ------------------------------------------------------------------------------------


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARDWAY_INVENTORY": str(ROOT / "inventory" / "sample.yaml")}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize(("args", "line"), [
    ((), "'chapter' did not receive required positional arguments: 'which'"),  # invoke's own line
    (("7", "--list"), "error: give one of"),
    (("99",), "error: no tutorial chapter '99'"),
    (("7", "--only", "pictures"), "error: --only: pictures is not one of files, commands, changes"),
    (("13", "--apply"), "error: cleanup removes the cluster, so `invoke chapter` leaves it to you"),
    (("1", "--apply"), "error: prerequisites: install the jumpbox's tools with `bash scripts/setup.sh`"),
    (("7", "--apply", "--fix"), "error: --fix: chapter 7 (etcd) repairs nothing"),
])
def test_task_errors_are_one_line(args, line):
    done = invoke("chapter", *args)
    assert done.returncode == 1 and done.stderr.strip().startswith(line), done.stderr
    assert "Traceback" not in done.stderr


def test_list_and_next_need_no_chapter(monkeypatch):
    """--list and --next stand in for the positional chapter (invoke would demand it otherwise)."""
    contexts = Collection(walkthrough.chapter).to_contexts()
    (ctx,) = contexts
    (which,) = ctx.positional_args
    assert ctx.missing_positional_args == [which]
    ctx.flags["--list"].value = True
    assert ctx.missing_positional_args == [] and which.value == ""


def test_task_prints_a_page_without_asking_nodes(state):
    done = invoke("chapter", "etcd", "--only", "files,commands", "--pki-dir", str(state.root))
    assert done.returncode == 0, done.stderr
    assert "== files, per node" in done.stdout and "systemctl start --no-block etcd" in done.stdout
    done = invoke("chapter", "7", "--only", "commands", "--json", "--pki-dir", str(state.root))
    doc = json.loads(done.stdout)
    assert doc["number"] == 7 and doc["commands"][0]["where"] == "jumpbox"


def test_deliveries_give_each_worker_only_its_own_key(ctx):
    got = view.deliveries(ctx, node_chapters(ctx))
    keys = {(d.node, d.jumpbox) for d in got if d.jumpbox.endswith(".key")}
    for w in ctx.inv.workers:
        mine = {j for n, j in keys if n == w.name}
        assert mine == {f"kubelet-{w.name}.key"}, mine
    etcd = {(d.node, d.path) for d in got if d.jumpbox.startswith("etcd-controller")}
    assert all(p in ("/etc/etcd/etcd.crt", "/etc/etcd/etcd.key") for _, p in etcd)
    assert {d.jumpbox for d in got if d.node == ctx.inv.controllers[0].name and d.path == "/etc/etcd/etcd.key"} == \
        {f"etcd-{ctx.inv.controllers[0].name}.key"}


def test_a_chapter_with_steps_types_them_after_its_files(ctx):
    routes = next(c for c in REGISTRY if c.name == "pod-routes")
    node = ctx.inv.workers[0]
    unsurveyed = view.manual_sections(ctx, routes)
    (mine,) = [s for s in unsurveyed if s.where == node.name]
    assert mine.commands[-1].startswith(f"# and the chapter's own steps on {node.name}")
    surveyed = view.manual_sections(ctx, routes, steps={node.name: ["ip route add 10.200.1.0/24 via 10.240.0.21"]})
    (mine,) = [s for s in surveyed if s.where == node.name]
    assert mine.commands[-1] == "ip route add 10.200.1.0/24 via 10.240.0.21"
    assert any(c.startswith("install -m 0644 ") and c.endswith("hardway-pod-routes.service") for c in mine.commands)


def test_scp_brackets_an_ipv6_address_ssh_does_not(ctx):
    node = dataclasses.replace(ctx.inv.controllers[0], address=ipaddress.ip_address("fd00::10"))
    assert manual.login(ctx.inv, node) == f"{ctx.inv.ssh.user}@fd00::10"
    assert manual.login(ctx.inv, node, scp=True) == f"{ctx.inv.ssh.user}@[fd00::10]"


def test_states_over_the_fake(inv, state, tmp_path, monkeypatch):
    """Unreachable nodes, nothing deployed, a missing PKI, a deployed chapter: each state from its checks."""
    monkeypatch.setattr(progress, "ADMIN_TARGET", tmp_path / "kube" / "config")
    cluster = FakeCluster()
    ctx = Context(inv, state, connector=cluster.connector)
    got = {s.slug: s for s in progress.states(ctx)}
    assert got["compute-resources"].state == progress.DONE
    assert got["certificate-authority"].state == progress.DONE
    assert got["etcd"].state == progress.NOT_STARTED and got["etcd"].results == []
    assert got["kubectl"].state == progress.NOT_STARTED
    assert got["smoke-test"].state == progress.NOT_STARTED  # never run before the chapters under it are done
    assert got["cleanup"].state == progress.DONE

    cluster[inv.workers[1].name].unreachable = True
    record = {"version": 1, "files": {"/etc/etcd/ca.crt": {"sha256": "0" * 64, "mode": "0644", "owner": "root",
                                                           "group": "root", "chapter": "etcd"}}}
    cluster[inv.controllers[0].name].files[RECORD] = FakeFile(json.dumps(record).encode(), 0o600)
    got = {s.slug: s for s in progress.states(ctx)}
    assert got["compute-resources"].state == progress.FAILING
    assert inv.workers[1].name in got["compute-resources"].detail or any(
        r.node == inv.workers[1].name and r.status == FAIL for r in got["compute-resources"].results)
    assert got["etcd"].state == progress.FAILING and got["etcd"].results  # started: its real checks ran, and fail
    assert got["cleanup"].state == progress.NOT_STARTED

    empty = Context(inv, PkiState(tmp_path / "none"), connector=cluster.connector)
    got = {s.slug: s for s in progress.states(empty, [tutorial.find(n) for n in ("4", "5", "6")])}
    assert {s.state for s in got.values()} == {progress.NOT_STARTED}


def test_apply_a_jumpbox_chapter_then_its_state(inv, tmp_path):
    """`invoke chapter 4 --apply` is `invoke pki`; its state then needs no node (none is dialed)."""
    pki_dir = tmp_path / "pki"
    done = invoke("chapter", "4", "--apply", "--json", "--pki-dir", str(pki_dir))
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["state"] == progress.DONE and all(r["status"] == OK for r in state["results"])
    assert "issued" in done.stderr or "kept" in done.stderr  # `invoke pki`'s own report, on stderr with --json
    page = json.loads(invoke("chapter", "encryption-keys", "--json", "--pki-dir", str(pki_dir)).stdout)
    assert page["state"]["state"] == progress.DONE
    assert {d["path"] for d in page["deliveries"]} == {"/etc/kubernetes/encryption-config.yaml"}
