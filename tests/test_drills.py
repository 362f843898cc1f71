"""The drills' definitions and the checks they sharpened, without a lab (tests/test_drills_lab.py runs
every drill on one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hardway import drills
from hardway.chapters import REGISTRY, by_name, verifiable
from hardway.chapters.control_plane import verify as cp_verify
from hardway.chapters.etcd import verify as etcd_verify
from hardway.checks import FAIL, OK, WARN
from hardway.errors import HardwayError
from hardway.lab import diskio
from hardway.signatures import shorten

ROOT = Path(__file__).resolve().parent.parent
ISSUE_13 = {"broken-continuation", "missing-key", "stale-data-dir", "member-stopped", "slow-disk",
            "apiserver-cert-without-lb", "stub-resolver", "missing-pod-route", "kubelet-cert-without-ip",
            "wrong-etcd-ca", "br-netfilter-off"}


def test_every_drill_the_issue_asks_for_is_defined_once_on_a_verifiable_chapter(inv) -> None:
    names = [d.name for d in drills.DRILLS]
    assert len(names) == len(set(names)) and set(names) >= ISSUE_13
    for d in drills.DRILLS:
        assert by_name(d.chapter) in verifiable()
        cause, fix = d.says(inv)  # every template's fields exist
        assert "{" not in cause + fix and d.target(inv) in by_name(d.chapter).targets(inv)
        if d.runnable:
            assert re.search(r"`invoke [^`]+`", fix), d.name


def test_an_unknown_drill_is_one_line_naming_the_drills() -> None:
    with pytest.raises(HardwayError, match=r"^no drill named 'nope'; drills: broken-continuation, .*lab.break --list"):
        drills.by_name("nope")


def test_the_list_without_a_lab_shows_placeholders_as_a_table_and_json() -> None:
    table = drills.rows()
    assert next(r for r in table if r["drill"] == "stale-data-dir")["fix"] == "`invoke etcd.replace NODE`"
    text = drills.format_rows(table)
    assert text.splitlines()[0].split() == ["DRILL", "CHAPTER", "NODE", "VERIFY", "CHECK", "BREAKS"]
    assert json.loads(drills.to_json(table))["drills"] == table
    done = subprocess.run([sys.executable, "-m", "invoke", "lab.break", "--list", "--json", "--name", "nosuchlab"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [r["drill"] for r in json.loads(done.stdout)["drills"]] == [d.name for d in drills.DRILLS]
    nothing = subprocess.run([sys.executable, "-m", "invoke", "lab.break"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert nothing.returncode == 1 and nothing.stderr.strip() == \
        "'lab.break' did not receive required positional arguments: 'drill'"


# --- the apiserver's etcd client, member by member ------------------------------------------------

EPS = [f"https://10.0.0.{i}:2379" for i in (10, 11, 12)]
HEALTHY = '{"health":"true"}'


def test_etcd_client_every_member_answers() -> None:
    status, detail, _ = cp_verify.judge_etcd_client([(u, 0, HEALTHY) for u in EPS])
    assert status == OK and detail.startswith("every etcd member accepts")


def test_etcd_client_one_member_down_is_a_warning_naming_it() -> None:
    answers = [(EPS[0], 0, HEALTHY), (EPS[1], 0, HEALTHY),
               (EPS[2], 7, "curl: (7) Failed to connect to 10.0.0.12 port 2379 after 0 ms: Couldn't connect")]
    status, detail, hint = cp_verify.judge_etcd_client(answers)
    assert status == WARN and detail == (f"2 of 3 etcd members accept the apiserver's etcd client; {EPS[2]} does not "
                                         "answer (that member is down)")
    assert "verify --chapter etcd" in hint


def test_etcd_client_a_ca_that_does_not_verify_etcd_is_named_with_its_fix() -> None:
    said = "curl: (60) SSL certificate problem: unable to get local issuer certificate More details here: …"
    status, detail, hint = cp_verify.judge_etcd_client([(u, 60, said) for u in EPS])
    assert status == FAIL and detail.endswith("(curl: (60) SSL certificate problem: unable to get local issuer "
                                              "certificate): it is not etcd's CA")
    assert hint.startswith("`invoke bootstrap-control-plane` pushes the etcd CA hardway planned")


def test_etcd_client_refused_by_etcd_and_nobody_answering() -> None:
    status, detail, hint = cp_verify.judge_etcd_client([(u, 56, "curl: (56) OpenSSL SSL_read: tlsv1 alert unknown ca")
                                                        for u in EPS])
    assert status == FAIL and "refuses the apiserver's etcd client" in detail and "rotate-certs" in hint
    status, detail, _ = cp_verify.judge_etcd_client([(u, 28, "curl: (28) timeout") for u in EPS])
    assert status == FAIL and detail.startswith("no etcd member answers")


def test_the_apiserver_journal_tells_an_untrusted_etcd_from_a_refused_client(inv) -> None:
    line = ("(stand-in) error: --etcd-servers: https://10.0.0.10:2379 refused --etcd-certfile=/etc/kubernetes/pki/"
            "apiserver-etcd-client.crt: its serving certificate does not verify: unable to get local issuer "
            "certificate")
    facts = cp_verify.NodeFacts(states={"kube-apiserver": "failed"}, journals={"kube-apiserver": line})
    [j] = [r for r in cp_verify.judge_node(inv, inv.controllers[0], ("kube-apiserver",), facts, [])
           if r.check == "journal"]
    assert "does not trust etcd's serving certificate" in j.detail and "bootstrap-control-plane" in j.hint


# --- the disk ----------------------------------------------------------------------------------------


def test_a_disk_slower_than_the_heartbeat_fails_a_merely_slow_one_warns(inv) -> None:
    status, detail, hint = etcd_verify.judge_disk(inv, 576.0)
    assert status == FAIL and "576 ms" in detail and "slower than etcd's heartbeat (100 ms" in detail
    assert hint == "move /var/lib/etcd to a faster disk (an SSD)"
    assert etcd_verify.judge_disk(inv, 13.0)[0] == WARN
    assert etcd_verify.judge_disk(inv, 0.4)[0] == OK


def test_a_filesystem_without_a_block_device_cannot_be_slowed() -> None:
    with pytest.raises(HardwayError, match=r"^cannot slow /proc: it is on a filesystem without a block device"):
        diskio.disk_of(Path("/proc"))


def test_a_journal_line_shows_etcds_error_beside_its_message() -> None:
    line = ('{"level":"fatal","ts":"2026-11-22T20:00:00Z","msg":"discovery failed",'
            '"error":"open /etc/etcd/etcd.key: no such file or directory"}')
    assert shorten(line) == "discovery failed: open /etc/etcd/etcd.key: no such file or directory"


def test_drills_name_only_registered_chapters() -> None:
    names = {c.name for c in REGISTRY}
    assert {d.chapter for d in drills.DRILLS} <= names
