"""The stand-ins, run as the lab runs them: Debian's /usr/bin/python3 on the built file.

Each one gets the command line and files hardway plans for a node (the sample inventory's PKI),
laid out under a temporary root; a real TLS etcd (Debian's) runs on 127.0.0.1. Only loopback is
ever dialled: every kubeconfig's server is pointed at the stand-in apiserver.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import py_compile
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway import encryption, flagspec, paths, plan, standins
from hardway.chapters import control_plane, workers
from hardway.state import etcd_cert_name

PYTHON = "/usr/bin/python3"
ETCD = "/usr/bin/etcd"
VERSION = "1.32.3"
pytestmark = pytest.mark.skipif(not (os.path.exists(PYTHON) and shutil.which(ETCD)),
                                reason="needs Debian's /usr/bin/python3 and etcd (scripts/setup.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bin")
    for component in standins.COMPONENTS:
        path = out / component
        path.write_bytes(standins.program(component, VERSION))
        path.chmod(0o755)
    return {c: out / c for c in standins.COMPONENTS}


class Proc:
    """A running stand-in; ``lines`` is everything it printed."""

    def __init__(self, program: Path, args: list[str], timeout: float = 3) -> None:
        env = dict(os.environ, HARDWAY_STANDIN_DIAL_TIMEOUT=str(timeout))
        self.p = subprocess.Popen([PYTHON, "-I", str(program), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=env)
        self.lines: list[str] = []

    def until_ready(self, deadline: float = 20) -> Proc:
        watchdog = threading.Timer(deadline, self.p.kill)  # a silent hang must not hang the test run
        watchdog.start()
        try:
            for line in self.p.stdout:
                self.lines.append(line.rstrip("\n"))
                assert line.startswith("(stand-in) "), f"a line without the stand-in mark: {line!r}"
                if line.strip() == "(stand-in) ready":
                    return self
        finally:
            watchdog.cancel()
        raise AssertionError(f"exited {self.p.wait()} before ready:\n" + "\n".join(self.lines))

    def stop(self) -> str:
        self.p.terminate()
        out, _ = self.p.communicate(timeout=10)
        self.lines += out.splitlines()
        return "\n".join(self.lines)


def run_to_end(program: Path, args: list[str], timeout: float = 2) -> tuple[int, str]:
    env = dict(os.environ, HARDWAY_STANDIN_DIAL_TIMEOUT=str(timeout))
    proc = subprocess.run([PYTHON, "-I", str(program), *args], capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# A node's planned files under a temporary root


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, target: str) -> str:
        return str(self.root / target.lstrip("/"))

    def argv(self, argv: list[str], drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> list[str]:
        out = [self.rewrite(a) for a in argv[1:] if not a.startswith(drop)]
        return [*out, *add]

    def rewrite(self, text: str) -> str:
        for prefix in ("/etc/kubernetes", "/var/lib/kubelet", "/var/lib/kube-proxy", "/var/log/kubernetes"):
            text = text.replace(prefix, self.path(prefix))
        return text


def lay_out(inv, state, node, root: Path, apiserver_url: str) -> Tree:
    tree = Tree(root)
    for f in plan.node_files(inv, node, state):
        if f.content is None:
            continue
        data = f.content
        if f.path.endswith((".yaml", ".toml")):
            data = tree.rewrite(data.decode()).encode()
        if "kubeconfig" in f.path:  # never dial the sample's addresses: only loopback
            data = re.sub(rb"server: \S+", f"server: {apiserver_url}".encode(), data)
        target = Path(tree.path(f.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(f.mode)
    return tree


def other_ca_pair(directory: Path) -> tuple[Path, Path]:
    """A client certificate and key from a CA nobody trusts."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger-ca")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "stranger.crt", directory / "stranger.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --------------------------------------------------------------------------------------------
# etcd and the stand-in apiserver, shared by the module


def start_etcd(inv, state, workdir: Path) -> tuple[subprocess.Popen, str]:
    member = etcd_cert_name(inv.controllers[0])  # its SANs carry 127.0.0.1
    client, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{client}"
    proc = subprocess.Popen([
        ETCD, "--name=t", f"--data-dir={workdir / 'etcd'}", f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}", f"--initial-cluster=t=http://127.0.0.1:{peer}",
        f"--cert-file={state.cert(member)}", f"--key-file={state.key(member)}",
        f"--trusted-ca-file={state.cert('etcd-ca')}", "--client-cert-auth", "--logger=zap", "--log-outputs=stderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.create_default_context(cafile=state.cert("etcd-ca"))
    ctx.load_cert_chain(state.cert("apiserver-etcd-client"), state.key("apiserver-etcd-client"))
    for _ in range(100):
        try:
            req = urllib.request.Request(f"{url}/v3/maintenance/status", data=b"{}", method="POST")
            urllib.request.urlopen(req, context=ctx, timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("etcd did not come up")


@pytest.fixture(scope="module")
def etcd(inv, state, tmp_path_factory):
    proc, url = start_etcd(inv, state, tmp_path_factory.mktemp("etcd"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def api_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def controller(inv, state, tmp_path_factory, api_port) -> Tree:
    return lay_out(inv, state, inv.controllers[0], tmp_path_factory.mktemp("controller"),
                   f"https://127.0.0.1:{api_port}")


def api_argv(inv, tree: Tree, etcd_url: str, port: int, *extra: str) -> list[str]:
    return tree.argv(control_plane.kube_apiserver_argv(inv, inv.controllers[0]),
                     drop=("--etcd-servers", "--bind-address", "--secure-port"),
                     add=(f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", f"--secure-port={port}", *extra))


@pytest.fixture(scope="module")
def apiserver(inv, programs, controller, etcd, api_port):
    proc = Proc(programs["kube-apiserver"], api_argv(inv, controller, etcd, api_port)).until_ready()
    yield proc
    proc.stop()


def get(url: str, state, cert: str | None = "admin", verify: bool = True) -> tuple[int, str]:
    """GET over TLS with a client certificate of the sample PKI (``cert``) or none."""
    ctx = ssl.create_default_context(cafile=state.cert("ca"))
    if not verify:  # the controller-manager and scheduler serve a self-signed certificate
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(state.cert(cert), state.key(cert))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------------------------
# The built file


def test_the_program_is_one_self_contained_file_for_debians_python(programs):
    for component, path in programs.items():
        text = path.read_text()
        assert text.startswith("#!/usr/bin/python3\n")
        assert not re.search(r"^(from|import) hardway", text, re.MULTILINE)  # hardway is not on the nodes
        py_compile.compile(str(path), cfile=str(path) + ".pyc", doraise=True)
        assert standins.standin_file(component, VERSION).mode == 0o755


def test_version_and_help_answer_like_a_binary_and_say_stand_in(programs):
    rc, out = run_to_end(programs["kube-apiserver"], ["--version"])
    assert rc == 0 and out.strip() == "Kubernetes v1.32.3-hardway-standin (stand-in)"
    assert standins.is_standin(out)
    rc, out = run_to_end(programs["kubelet"], ["--help"])
    assert rc == 0 and out.startswith("(stand-in) kubelet v1.32.3")
    listed = set(re.findall(r"--([a-z0-9_-]+)", out.split("Flags", 1)[1]))
    assert {f.name for f in flagspec.load("kubelet", VERSION).flags.values()} <= listed


# --------------------------------------------------------------------------------------------
# kube-apiserver


def test_apiserver_accepts_the_planned_command_line_and_serves_health_over_tls(apiserver, api_port, state,
                                                                               controller):
    base = f"https://127.0.0.1:{api_port}"
    assert get(f"{base}/readyz", state) == (200, "ok")
    assert get(f"{base}/livez", state) == (200, "ok")
    status, body = get(f"{base}/version", state)
    assert status == 200 and json.loads(body)["gitVersion"] == "v1.32.3-hardway-standin"
    assert get(f"{base}/api/v1/nodes", state)[0] == 404
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        get(f"{base}/readyz", state, cert=None)
    log = "\n".join(apiserver.lines)
    assert all(line.startswith("(stand-in) ") for line in apiserver.lines)
    for checked in ("--tls-cert-file=", "--etcd-certfile=", "--encryption-provider-config=", "--client-ca-file=",
                    "--etcd-servers: https://127.0.0.1:", "answers over TLS",
                    "providers secretbox, identity; every key well formed", "audit Policy, 2 rule(s)",
                    "aggregation: --proxy-client-cert-file (CN=front-proxy-client",
                    "CN in --requestheader-allowed-names"):
        assert checked in log
    # every request served is one audit event (metadata only), in the log the inventory names
    audit_log = Path(controller.path("/var/log/kubernetes")) / "audit.log"
    events = [json.loads(line) for line in audit_log.read_text().splitlines()]
    mine = [e for e in events if e["requestURI"] == "/api/v1/nodes"]
    assert mine and mine[-1]["level"] == "Metadata" and mine[-1]["user"]["username"] == "admin"
    assert mine[-1]["responseStatus"]["code"] == 404 and "requestObject" not in mine[-1]


def test_apiserver_readyz_follows_etcd_live(inv, state, programs, controller, tmp_path):
    etcd_proc, url = start_etcd(inv, state, tmp_path)
    port = free_port()
    proc = Proc(programs["kube-apiserver"], api_argv(inv, controller, url, port)).until_ready()
    try:
        assert get(f"https://127.0.0.1:{port}/readyz", state) == (200, "ok")
        etcd_proc.terminate()
        etcd_proc.wait(timeout=10)
        status, body = get(f"https://127.0.0.1:{port}/readyz", state)
        assert status == 500 and "not ready" in body and url in body
    finally:
        proc.stop()
        etcd_proc.kill()


def short_secretbox(tmp: Path) -> Path:
    path = tmp / "short-secretbox.yaml"
    short = encryption.Key("secretbox", "key1", base64.b64encode(b"k" * 16).decode())
    path.write_bytes(encryption.render_keys([short]))
    return path


@pytest.mark.parametrize(("change", "expected"), [
    (lambda a, t: [*a, "--insecure-port=0"], "unknown flag --insecure-port"),
    (lambda a, t: [*a, "--service-cluster-ip-range=10.32.0.0/33"], "invalid value '10.32.0.0/33'"),
    (lambda a, t: [*a, "--kubelet-preferred-address-types=InternalIP,NodeIP"], "--kubelet-preferred-address-types"),
    (lambda a, t: [x.replace("kube-apiserver.crt", "missing.crt") if x.startswith("--tls-cert-file") else x
                   for x in a], "missing.crt: no such file"),
    (lambda a, t: [x.replace("kube-apiserver.key", "apiserver-kubelet-client.key")
                   if x.startswith("--tls-private-key-file") else x for x in a],
     "--tls-private-key-file=", ),
    (lambda a, t: [*a, f"--etcd-certfile={t / 'stranger.crt'}", f"--etcd-keyfile={t / 'stranger.key'}"],
     "refused --etcd-certfile="),
    # the aggregation layer: a proxy client the front-proxy CA did not sign, a CN not allowed
    (lambda a, t: [x.replace("front-proxy-client.", "apiserver-kubelet-client.") for x in a],
     "is not signed by --requestheader-client-ca-file="),
    (lambda a, t: [x.replace("=front-proxy-client", "=aggregator") for x in a],
     "CN 'front-proxy-client' is not in --requestheader-allowed-names=aggregator"),
    # an audit policy that is not one, a secretbox key of 16 bytes
    (lambda a, t: [x.replace("audit-policy.yaml", "kube-scheduler.yaml") for x in a],
     "not an audit Policy (audit.k8s.io/v1)"),
    (lambda a, t: [*a, f"--encryption-provider-config={short_secretbox(t)}"],
     "secretbox.keys[0]: needs a name and a base64 secret of 32 bytes"),
])
def test_apiserver_refuses_a_broken_contract_with_one_line(inv, programs, controller, etcd, tmp_path, change,
                                                           expected):
    other_ca_pair(tmp_path)
    argv = change(api_argv(inv, controller, etcd, free_port()), tmp_path)
    rc, out = run_to_end(programs["kube-apiserver"], argv)
    errors = [line for line in out.splitlines() if line.startswith("(stand-in) error: ")]
    assert rc == 1 and len(errors) == 1 and expected in errors[0], out
    if "tls-private-key-file" in expected:
        assert "is not the key of --tls-cert-file" in errors[0]


# --------------------------------------------------------------------------------------------
# kube-controller-manager and kube-scheduler


def test_controller_manager_dials_the_apiserver_and_serves_healthz(inv, state, programs, controller, apiserver):
    port = free_port()
    argv = controller.argv(control_plane.kube_controller_manager_argv(inv, inv.controllers[0]),
                           drop=("--bind-address",), add=("--bind-address=127.0.0.1", f"--secure-port={port}"))
    proc = Proc(programs["kube-controller-manager"], argv).until_ready()
    try:
        assert get(f"https://127.0.0.1:{port}/healthz", state, cert=None, verify=False) == (200, "ok")
        log = "\n".join(proc.lines)
        assert "accepts" in log and "client certificate (CN=system:kube-controller-manager" in log
        assert "--cluster-signing-cert-file=" in log and "self-signed" in log
    finally:
        proc.stop()


def test_controller_manager_refuses_a_kubeconfig_whose_key_is_not_its_certs(inv, state, programs, controller,
                                                                           tmp_path):
    doc = yaml.safe_load(Path(controller.path(f"{paths.K8S_DIR}/kube-controller-manager.kubeconfig")).read_text())
    other = yaml.safe_load(Path(controller.path(f"{paths.K8S_DIR}/kube-scheduler.kubeconfig")).read_text())
    doc["users"][0]["user"]["client-key-data"] = other["users"][0]["user"]["client-key-data"]
    bad = tmp_path / "kcm.kubeconfig"
    bad.write_text(yaml.safe_dump(doc))
    argv = controller.argv(control_plane.kube_controller_manager_argv(inv, inv.controllers[0]), drop=("--kubeconfig",),
                           add=(f"--kubeconfig={bad}",))
    rc, out = run_to_end(programs["kube-controller-manager"], argv)
    assert rc == 1 and "client-key is not the key of client-certificate" in out, out


def test_scheduler_reads_its_config_dials_and_serves_health(inv, state, programs, controller, apiserver):
    port = free_port()
    argv = controller.argv(control_plane.kube_scheduler_argv(inv, inv.controllers[0]),
                           add=("--bind-address=127.0.0.1", f"--secure-port={port}"))
    proc = Proc(programs["kube-scheduler"], argv).until_ready()
    try:
        for path in ("/healthz", "/livez", "/readyz"):
            assert get(f"https://127.0.0.1:{port}{path}", state, cert=None, verify=False) == (200, "ok")
        assert "KubeSchedulerConfiguration with only keys kube-scheduler v1.32 knows" in "\n".join(proc.lines)
    finally:
        proc.stop()


def test_scheduler_refuses_an_unknown_config_key(inv, programs, controller, tmp_path):
    config = Path(controller.path(f"{paths.K8S_DIR}/config/kube-scheduler.yaml")).read_text()
    bad = tmp_path / "scheduler.yaml"
    bad.write_text(config + "percentOfNodesToScore: 50\n")
    rc, out = run_to_end(programs["kube-scheduler"], [f"--config={bad}"])
    assert rc == 1 and "percentOfNodesToScore: unknown key" in out, out


# --------------------------------------------------------------------------------------------
# kubelet and kube-proxy


@pytest.fixture()
def worker(inv, state, tmp_path, api_port):
    tree = lay_out(inv, state, inv.workers[0], tmp_path / "root", f"https://127.0.0.1:{api_port}")
    sock = socket.socket(socket.AF_UNIX)  # containerd's socket, as far as the kubelet can tell
    sock.bind(str(tmp_path / "containerd.sock"))
    sock.listen()
    config = Path(tree.path(f"{paths.KUBELET_DIR}/kubelet-config.yaml"))
    doc = yaml.safe_load(config.read_text())
    doc.update(address="127.0.0.1", port=free_port(), healthzPort=free_port(),
               containerRuntimeEndpoint=f"unix://{tmp_path / 'containerd.sock'}")
    config.write_text(yaml.safe_dump(doc))
    yield tree, doc
    sock.close()


def test_kubelet_serves_10250_demanding_client_certs_and_plain_healthz(inv, state, programs, worker, apiserver):
    tree, doc = worker
    # hardway renders no deprecated flag any more: add one to see the stand-in warn about it
    argv = [*workers.kubelet_argv(inv, inv.workers[0]), "--register-node=true"]
    proc = Proc(programs["kubelet"], tree.argv(argv)).until_ready()
    try:
        assert get(f"https://127.0.0.1:{doc['port']}/healthz", state, cert="apiserver-kubelet-client") == (200, "ok")
        with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
            get(f"https://127.0.0.1:{doc['port']}/healthz", state, cert=None)
        with urllib.request.urlopen(f"http://127.0.0.1:{doc['healthzPort']}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok"
        log = "\n".join(proc.lines)
        assert "--register-node is deprecated" in log and "containerd.sock accepts connections" in log
        assert "carries --node-ip 10.240.0.20 as IP SAN" in log and "CN is system:node:worker-0" in log
    finally:
        proc.stop()


def test_kubelet_refuses_a_misspelt_config_key_and_a_missing_runtime(inv, programs, worker, tmp_path):
    tree, doc = worker
    argv = tree.argv(workers.kubelet_argv(inv, inv.workers[0]))
    config = Path(tree.path(f"{paths.KUBELET_DIR}/kubelet-config.yaml"))
    config.write_text(yaml.safe_dump(dict(doc, containerRuntimeEndpoint="unix:///nonexistent/containerd.sock")))
    rc, out = run_to_end(programs["kubelet"], argv, timeout=0.5)
    assert rc == 1 and "/nonexistent/containerd.sock" in out and "is containerd running?" in out, out
    config.write_text(yaml.safe_dump(dict(doc, resolveConf="/etc/resolv.conf")))
    rc, out = run_to_end(programs["kubelet"], argv)
    assert rc == 1 and "resolveConf: unknown key" in out, out


def test_kube_proxy_serves_healthz(inv, state, programs, worker, apiserver):
    tree, _ = worker
    port = free_port()
    config = Path(tree.path(f"{paths.KUBE_PROXY_DIR}/kube-proxy-config.yaml"))
    config.write_text(config.read_text() + f'healthzBindAddress: "127.0.0.1:{port}"\n')
    proc = Proc(programs["kube-proxy"], tree.argv(workers.kube_proxy_argv(inv, inv.workers[0]))).until_ready()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["standIn"] is True
        assert "KubeProxyConfiguration with only keys kube-proxy v1.32 knows" in "\n".join(proc.lines)
    finally:
        proc.stop()
