"""The smoke chapter's code path for a real cluster, on recorded kubectl and etcdctl outputs
(tests/data/kubectl/smoke.json) through a fake ClusterAccess and the remote fake; and the lab's
"skipped: stand-in" / "skipped: lab", which are never ok."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardway import inventory
from hardway.chapters import Context
from hardway.chapters import smoke as sm
from hardway.checks import FAIL, OK, SKIP
from hardway.remote import QUIET
from hardway.state import PkiState
from tests.fakes import FakeCluster
from tests.workers_fakes import recorded

ROOT = Path(__file__).resolve().parent.parent
# the recorded etcd value (tests/data/kubectl) is the tutorial's aescbc
SAMPLE = ROOT / "inventory" / "sample.yaml"
INV = inventory.parse(SAMPLE.read_text().replace("provider: secretbox", "provider: aescbc"), str(SAMPLE),
                      base=ROOT / "inventory")
RECORDED = json.loads((Path(__file__).parent / "data" / "kubectl" / "smoke.json").read_text())


class FakeAccess:
    """Answers kubectl from the recordings; records every command, the forwards and the requests."""

    def __init__(self, *overlays: str) -> None:
        self.answers = dict(RECORDED["real"])
        for name in overlays:
            self.answers.update(RECORDED[name])
        self.calls: list[str] = []

    def kubectl(self, *args: str, timeout: float = 60) -> sm.Run:
        line = " ".join(args)
        self.calls.append(line)
        code, out, err = self.answers.get(line, [1, "", f"error: no recording for `kubectl {line}`"])
        return sm.Run(code, out, err)

    @contextlib.contextmanager
    def port_forward(self, pod: str, port: int) -> Iterator[int]:
        self.calls.append(f"port-forward pod/{pod} :{port}")
        _, out, _ = self.answers["port-forward"]
        yield int(out.split(":")[1].split()[0])

    def http_get(self, url: str) -> tuple[int, str]:
        self.calls.append(f"GET {url}")
        key = "http 127.0.0.1:8080" if "127.0.0.1:8080" in url else "http worker-0"
        status, body, _ = self.answers[key] if ("31567" in url or "8080" in url) else [0, "", ""]
        return status, body


def cluster(cgroups: str = "lab-nspawn-v1", writable: bool = True, etcd: str = "etcdctl get") -> FakeCluster:
    c = FakeCluster()
    answer = recorded("cgroups", cgroups).stdout
    if writable:
        answer = answer.replace("read-only", "writable")
    for w in INV.workers:
        c[w.name].facts["cgroups"] = answer
    for n in INV.controllers:
        c[n.name].facts["etcd_get"] = RECORDED["real"][etcd][1]
    return c


def run(access: FakeAccess, fake: FakeCluster) -> dict[str, object]:
    ctx = Context(INV, PkiState(Path("/nonexistent")), connector=fake.connector, progress=QUIET)
    return {r.check: r for r in sm.smoke(ctx, access)}


def test_a_real_cluster_passes_every_step_and_cleans_up_what_it_made() -> None:
    access = FakeAccess()
    got = run(access, cluster())
    assert {k: r.status for k, r in got.items()} == dict.fromkeys(
        ("apiserver", *sm.STEPS, "cleanup"), OK), [r for r in got.values() if r.status != OK]
    assert got["encryption"].detail == "secret hardway-smoke is stored encrypted in etcd: k8s:enc:aescbc:v1:key1:…"
    assert got["nodeport"].detail == "http://10.240.0.20:31567/ (worker-0): HTTP 200"
    assert "GET http://127.0.0.1:8080/" in access.calls and "GET http://10.240.0.20:31567/" in access.calls
    assert access.calls[-1] == ("delete secret/hardway-smoke deployment/hardway-smoke service/hardway-smoke "
                                "--ignore-not-found --wait=false")


def test_a_secret_stored_in_the_clear_fails_encryption_and_says_why() -> None:
    got = run(FakeAccess(), cluster(etcd="etcdctl get unencrypted"))
    assert got["encryption"].status == FAIL and "not encrypted (k8s:enc:aescbc:v1:…)" in got["encryption"].detail
    assert "--encryption-provider-config" in got["encryption"].hint


def test_the_stand_in_apiserver_skips_every_step_and_creates_nothing() -> None:
    access = FakeAccess("standin")
    got = run(access, cluster())
    assert {r.status for r in got.values()} == {SKIP}
    assert got["apiserver"].detail == "skipped: stand-in (the apiserver says v1.32.3-hardway-standin)"
    assert access.calls == ["version -o json"]


def test_lab_workers_that_cannot_run_containers_skip_the_pod_steps_but_not_encryption() -> None:
    access = FakeAccess()
    got = run(access, cluster(writable=False))
    assert got["encryption"].status == OK
    for step in sm.POD_STEPS:
        assert got[step].status == SKIP
        assert got[step].detail.startswith("skipped: lab: containers cannot run on worker-0")
    assert not any(c.startswith("create deployment") for c in access.calls)
    assert got["cleanup"].detail == "deleted secret/hardway-smoke"


def test_an_unreachable_apiserver_fails_once_and_skips_the_rest() -> None:
    got = run(FakeAccess("down"), cluster())
    assert got["apiserver"].status == FAIL and "was refused" in got["apiserver"].detail
    assert {got[s].status for s in sm.STEPS} == {SKIP}


def test_a_name_already_taken_is_not_the_tests_and_is_never_deleted() -> None:
    access = FakeAccess("exists")
    got = run(access, cluster(writable=False))
    assert got["encryption"].status == FAIL and "already exists" in got["encryption"].detail
    assert got["cleanup"].detail == "nothing was created"
    assert not any(c.startswith("delete") for c in access.calls)


@pytest.mark.parametrize("broken", ["logs hardway-smoke-56fcf95486-j9b9k",
                                    "exec hardway-smoke-56fcf95486-j9b9k -- nginx -v"])
def test_logs_and_exec_failing_point_at_the_apiserver_to_kubelet_path(broken: str) -> None:
    access = FakeAccess()
    access.answers[broken] = [1, "", "Error from server (Forbidden): Forbidden (user=kubernetes, verb=get, "
                                     "resource=nodes, subresource=proxy)\n"]
    got = run(access, cluster())
    step = broken.split()[0]
    assert got[step].status == FAIL and "Forbidden (user=kubernetes" in got[step].detail
    assert "invoke verify --chapter workers" in got[step].hint
