"""Chapter smoke: the tutorial's smoke test, with real kubectl against the cluster (`invoke smoke-test`).

Steps, each a result: the apiserver answers; a Secret is encrypted at rest (read back from etcd on a
controller, its value must start with ``k8s:enc:<provider>:v1:``); a Deployment rolls out;
port-forward reaches its pod; its logs show that request; exec runs in it; a NodePort Service
answers on the pod's node. Everything the test created is deleted at the end, and only that (a
name that already existed is not the test's and is left alone).

When the apiserver is hardway's stand-in (its /version says so), every step is "skipped: stand-in";
steps that need a running pod are "skipped: lab" where the workers cannot run containers (cgroups
read-only, as in nspawn lab nodes on a cgroup v1 host). Never ok for what was not proven.

kubectl, the port-forward and the HTTP requests go through ``ClusterAccess``; tests give a fake one
that answers from the tutorial's recorded outputs (tests/data/kubectl/), the same code path.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import select
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hardway import encryption, remote
from hardway.chapters.base import ApplyReport, Chapter, Context
from hardway.chapters.etcd.files import ctl
from hardway.chapters.workers import node as worker_node
from hardway.checks import FAIL, OK, SKIP, Check, CheckResult
from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, gather
from hardway.inventory import Inventory
from hardway.standins import is_standin

NAME = "smoke"
OBJECT = "hardway-smoke"  # the Secret, Deployment and Service the test creates (and deletes)
IMAGE = "nginx:latest"
ROLLOUT_TIMEOUT_S = 180


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0

    def why(self) -> str:
        return ((self.err or self.out).strip().splitlines() or [f"exit {self.code}"])[-1][:200]


class ClusterAccess(Protocol):
    def kubectl(self, *args: str, timeout: float = 60) -> Run: ...

    def port_forward(self, pod: str, port: int) -> contextlib.AbstractContextManager[int]:
        """Forward a local port to the pod's ``port`` while the context lasts; yields the local port."""
        ...

    def http_get(self, url: str) -> tuple[int, str]: ...


class KubectlAccess:
    """The real thing: kubectl on the jumpbox with the admin kubeconfig."""

    def __init__(self, kubeconfig: Path, kubectl: str = "kubectl") -> None:
        self.base = [kubectl, f"--kubeconfig={kubeconfig}"]

    def kubectl(self, *args: str, timeout: float = 60) -> Run:
        try:
            p = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return Run(127, "", "kubectl not found on the jumpbox (Debian: kubernetes-client)")
        except subprocess.TimeoutExpired:
            return Run(124, "", f"kubectl {' '.join(args)} timed out after {timeout:.0f}s")
        return Run(p.returncode, p.stdout, p.stderr)

    @contextlib.contextmanager
    def port_forward(self, pod: str, port: int) -> Iterator[int]:
        proc = subprocess.Popen([*self.base, "port-forward", f"pod/{pod}", f":{port}"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            deadline, seen = time.monotonic() + 20, ""
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                line = proc.stdout.readline() if ready else ""
                seen += line
                m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if m:
                    yield int(m.group(1))
                    return
                if proc.poll() is not None and not line:
                    break
            raise RuntimeError(f"kubectl port-forward did not start: {seen.strip()[-200:] or 'no output'}")
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def http_get(self, url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # an http:// URL hardway built
                return resp.status, resp.read(4096).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError as exc:
            return 0, str(exc)


# --- what the cluster is -------------------------------------------------------------------------


def server_version(access: ClusterAccess) -> tuple[str | None, str]:
    """(gitVersion, or None when the apiserver does not answer; what kubectl said)."""
    r = access.kubectl("version", "-o", "json", timeout=20)
    try:
        doc = json.loads(r.out)
    except ValueError:
        return None, r.why()
    git = (doc.get("serverVersion") or {}).get("gitVersion")
    return git, r.why() if git is None else git


def _cgroups(out: FactOutput) -> bool:
    return worker_node.CGROUPS.parse(out).writable


def workers_run_containers(ctx: Context) -> tuple[bool, str]:
    """False (and which worker) when a worker's cgroups are read-only: no pod can run there."""
    fact: Fact[bool] = Fact("cgroups", worker_node.CGROUPS.shell, _cgroups)
    for o in remote.fan_out(ctx.inv, ctx.inv.workers, lambda r: gather(r, [fact])[fact], connector=ctx.connector):
        if o.ok and o.value is False:
            return False, o.node.name
    return True, ""


def etcd_value(ctx: Context, key: str) -> bytes | None:
    """The raw value of ``key`` in etcd, read on the first controller that answers."""

    def parse(out: FactOutput) -> bytes | None:
        if not out.ok:
            return None
        kvs = json.loads(out.stdout).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    for c in ctx.inv.controllers:
        fact = Fact("etcd_get", ctl(ctx.inv, c, f"get {key} -w json"), parse, (key,))
        o = remote.fan_out(ctx.inv, [c], lambda r, f=fact: gather(r, [f])[f], connector=ctx.connector)[0]
        if o.ok and o.value is not None:
            return o.value
    return None


# --- the steps -----------------------------------------------------------------------------------

STEPS = ("encryption", "deployment", "port-forward", "logs", "exec", "nodeport")
POD_STEPS = STEPS[1:]


def _result(step: str, status: str, detail: str, hint: str = "") -> CheckResult:
    return CheckResult(NAME, step, "-", status, detail, hint)


def smoke(ctx: Context, access: ClusterAccess) -> list[CheckResult]:
    inv = ctx.inv
    version, said = server_version(access)
    if version is None:
        return [_result("apiserver", FAIL, f"kubectl cannot reach the apiserver at {inv.api_endpoint.url}: {said}",
                        "run `invoke verify --chapter control-plane`")] + \
               [_result(s, SKIP, "skipped: the apiserver did not answer") for s in STEPS]
    if is_standin(version):
        return [_result("apiserver", SKIP, f"skipped: stand-in (the apiserver says {version})")] + \
               [_result(s, SKIP, "skipped: stand-in (needs the real Kubernetes API: name the real binaries in the "
                                 "inventory)") for s in STEPS]
    results = [_result("apiserver", OK, f"kubectl reaches {inv.api_endpoint.url}: {version}")]
    created: list[str] = []
    try:
        results.append(encryption_step(ctx, access, created))
        can_run, where = workers_run_containers(ctx)
        if not can_run:
            results += [_result(s, SKIP, f"skipped: lab: containers cannot run on {where} (its cgroups are "
                                         "read-only)") for s in POD_STEPS]
        else:
            results += pod_steps(inv, access, created)
    finally:
        results.append(cleanup(access, created))
    return results


def encrypting_provider(ctx: Context) -> str:
    """The provider of the key that encrypts now: the PKI dir's config says (a rotation may have changed
    it), else the inventory."""
    try:
        return encryption.load(ctx.state)[0].provider
    except HardwayError:
        return ctx.inv.encryption_provider


def encryption_step(ctx: Context, access: ClusterAccess, created: list[str]) -> CheckResult:
    r = access.kubectl("create", "secret", "generic", OBJECT, "--from-literal=mykey=mydata")
    if not r.ok:
        return _result("encryption", FAIL, f"cannot create secret {OBJECT}: {r.why()}",
                       f"if it exists from an earlier run, `kubectl delete secret {OBJECT}`")
    created.append(f"secret/{OBJECT}")
    raw = etcd_value(ctx, f"/registry/secrets/default/{OBJECT}")
    want = f"k8s:enc:{encrypting_provider(ctx)}:v1:".encode()
    if raw is None:
        return _result("encryption", FAIL, f"secret {OBJECT} not found in etcd from any controller",
                       "run `invoke verify --chapter etcd`")
    if not raw.startswith(want):
        return _result("encryption", FAIL, f"secret {OBJECT} is stored as {raw[:24]!r} in etcd, not encrypted "
                                           f"({want.decode()}…)",
                       "the apiserver needs --encryption-provider-config: run `invoke bootstrap-control-plane`")
    key = raw[len(want):].split(b":", 1)[0].decode(errors="replace")
    return _result("encryption", OK, f"secret {OBJECT} is stored encrypted in etcd: {want.decode()}{key}:…")


def _jsonpath(access: ClusterAccess, *args: str) -> str:
    return access.kubectl("get", *args).out.strip()


def pod_steps(inv: Inventory, access: ClusterAccess, created: list[str]) -> list[CheckResult]:
    out = []
    r = access.kubectl("create", "deployment", OBJECT, f"--image={IMAGE}")
    if not r.ok:
        return [_result("deployment", FAIL, f"cannot create deployment {OBJECT}: {r.why()}")] + \
               [_result(s, SKIP, "skipped: no deployment") for s in POD_STEPS[1:]]
    created.append(f"deployment/{OBJECT}")
    r = access.kubectl("rollout", "status", f"deployment/{OBJECT}", f"--timeout={ROLLOUT_TIMEOUT_S}s",
                       timeout=ROLLOUT_TIMEOUT_S + 10)
    pod = _jsonpath(access, "pods", "-l", f"app={OBJECT}", "-o", "jsonpath={.items[0].metadata.name}")
    if not r.ok or not pod:
        return [_result("deployment", FAIL, f"deployment {OBJECT} did not roll out: {r.why()}",
                        "`kubectl describe pods -l app=hardway-smoke`; `invoke verify --chapter workers` names "
                        "CNI, cgroup and runtime problems")] + \
               [_result(s, SKIP, "skipped: no running pod") for s in POD_STEPS[1:]]
    out.append(_result("deployment", OK, f"deployment {OBJECT} ({IMAGE}) rolled out: pod {pod}"))
    try:
        with access.port_forward(pod, 80) as port:
            status, body = access.http_get(f"http://127.0.0.1:{port}/")
        ok = status == 200
        out.append(_result("port-forward", OK if ok else FAIL, f"port-forward to {pod}:80: HTTP {status}"
                                                               f"{'' if ok else ' ' + body[:120]}",
                           "" if ok else "socat must be on the worker; `invoke verify --chapter workers`"))
    except (RuntimeError, OSError) as exc:
        out.append(_result("port-forward", FAIL, str(exc)[:200],
                           "the apiserver must reach the kubelet (`invoke verify --chapter workers`); socat too"))
    r = access.kubectl("logs", pod)
    out.append(_result("logs", OK, f"kubectl logs {pod}: “{r.out.strip().splitlines()[-1][:100]}”")
               if r.ok and "GET / HTTP/1.1" in r.out else
               _result("logs", FAIL, f"kubectl logs {pod}: {r.why() if not r.ok else 'no request logged'}",
                       "the apiserver→kubelet path: `invoke verify --chapter workers`"))
    r = access.kubectl("exec", pod, "--", "nginx", "-v")
    said = (r.out + r.err).strip()
    out.append(_result("exec", OK, f"kubectl exec {pod} -- nginx -v: {said[:80]}") if r.ok and "nginx version" in said
               else _result("exec", FAIL, f"kubectl exec {pod}: {r.why()}",
                            "the apiserver→kubelet path: `invoke verify --chapter workers`"))
    out.append(nodeport_step(inv, access, pod, created))
    return out


def nodeport_step(inv: Inventory, access: ClusterAccess, pod: str, created: list[str]) -> CheckResult:
    r = access.kubectl("expose", "deployment", OBJECT, "--port=80", "--type=NodePort")
    if not r.ok:
        return _result("nodeport", FAIL, f"cannot expose {OBJECT}: {r.why()}")
    created.append(f"service/{OBJECT}")
    port = _jsonpath(access, "service", OBJECT, "-o", "jsonpath={.spec.ports[0].nodePort}")
    node_name = _jsonpath(access, "pod", pod, "-o", "jsonpath={.spec.nodeName}")
    node = next((n for n in inv.nodes if n.name == node_name), None)
    if node is None or not port.isdigit():
        return _result("nodeport", FAIL, f"service {OBJECT}: node port {port or '?'} on node {node_name or '?'} "
                                         "(not in the inventory)")
    host = f"[{node.address}]" if node.address.version == 6 else str(node.address)
    status, body = access.http_get(f"http://{host}:{port}/")
    if status == 200:
        return _result("nodeport", OK, f"http://{host}:{port}/ ({node.name}): HTTP 200")
    return _result("nodeport", FAIL, f"http://{host}:{port}/ ({node.name}): {status or body[:120]}",
                   "kube-proxy must run on the node (`invoke verify --chapter workers`); a firewall may drop the "
                   "node port range 30000-32767")


def cleanup(access: ClusterAccess, created: list[str]) -> CheckResult:
    if not created:
        return _result("cleanup", OK, "nothing was created")
    r = access.kubectl("delete", *created, "--ignore-not-found", "--wait=false")
    if r.ok:
        return _result("cleanup", OK, f"deleted {', '.join(created)}")
    return _result("cleanup", FAIL, f"could not delete {', '.join(created)}: {r.why()}",
                   f"`kubectl delete {' '.join(created)}`")


class SmokeReport(ApplyReport):
    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in (OK, FAIL, SKIP)}
        return (f"{self.chapter}: {counts[OK]} step(s) ok, {counts[FAIL]} failed, {counts[SKIP]} skipped; "
                "nothing is left behind on the cluster" if counts[OK] + counts[FAIL] else
                f"{self.chapter}: every step skipped; nothing was created")


class SmokeChapter(Chapter):
    name = NAME
    title = "Smoke test"
    summary = ("Proves the cluster works end to end as a user sees it: Secrets encrypted in etcd, a Deployment "
               "running, port-forward, logs and exec reaching the pod through the kubelet, and a NodePort "
               "answering. It cleans up what it created.")
    task = "smoke-test"
    applied_by_task = True

    def access(self, ctx: Context) -> ClusterAccess:
        return KubectlAccess(ctx.state.kubeconfig("admin"))

    def apply(self, ctx: Context) -> ApplyReport:
        t0 = time.monotonic()
        results = smoke(ctx, self.access(ctx))
        return SmokeReport(self.name, [], {}, {}, {}, results, time.monotonic() - t0)

    def checks(self, ctx: Context) -> list[Check]:
        return [Check(NAME, "smoke", "the tutorial's smoke test through kubectl",
                      lambda: smoke(ctx, self.access(ctx)))]


CHAPTER = SmokeChapter()
