"""Stand-in runtime, part 3: each component's contract, and ``main``.

Inlined by ``hardway.standins`` after ``flagspec.py``, ``common.py`` and ``apiserver.py``; lines ending in "# inlined"
are dropped there. Every check that passes is logged ("check ok: ..."), every violation is one
"(stand-in) error: ..." line naming the flag or file, then exit 1.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

from hardway.flagspec import Spec  # inlined
from hardway.standins.runtime.apiserver import (  # inlined
    AuditLog,  # inlined
    audit_policy,  # inlined
    check_aggregation,  # inlined
    encryption_config,  # inlined
)  # inlined
from hardway.standins.runtime.common import (  # inlined
    DIAL_TIMEOUT,  # inlined
    MARK,  # inlined
    Fatal,  # inlined
    Refused,  # inlined
    _read,  # inlined
    ca_bundle,  # inlined
    cert_pair,  # inlined
    check,  # inlined
    client_context,  # inlined
    describe,  # inlined
    dial,  # inlined
    in_background,  # inlined
    kubeconfig,  # inlined
    load_yaml,  # inlined
    log,  # inlined
    private_key,  # inlined
    public_keys,  # inlined
    request,  # inlined
    san_ips,  # inlined
    self_signed,  # inlined
    serve,  # inlined
    server_context,  # inlined
    version_json,  # inlined
    warn,  # inlined
)  # inlined

# Flags that name files, per component: (certificate flag, key flag) pairs and single files by kind.
PAIRS = {
    "kube-apiserver": [("tls-cert-file", "tls-private-key-file"), ("etcd-certfile", "etcd-keyfile"),
                       ("kubelet-client-certificate", "kubelet-client-key"),
                       ("proxy-client-cert-file", "proxy-client-key-file")],
    "kube-controller-manager": [("tls-cert-file", "tls-private-key-file"),
                                ("cluster-signing-cert-file", "cluster-signing-key-file")] + [
        (f"cluster-signing-{s}-cert-file", f"cluster-signing-{s}-key-file")
        for s in ("kube-apiserver-client", "kubelet-client", "kubelet-serving", "legacy-unknown")],
    "kube-scheduler": [("tls-cert-file", "tls-private-key-file")],
    "kubelet": [("tls-cert-file", "tls-private-key-file")],
    "kube-proxy": [],
}
FILES = {
    "kube-apiserver": {
        "client-ca-file": "ca", "etcd-cafile": "ca", "kubelet-certificate-authority": "ca",
        "requestheader-client-ca-file": "ca", "oidc-ca-file": "ca", "peer-ca-file": "ca",
        "service-account-key-file": "pubkeys", "service-account-signing-key-file": "privkey",
        "encryption-provider-config": "encryption", "audit-policy-file": "audit-policy",
        "authentication-config": "yaml",
        "authorization-config": "yaml", "admission-control-config-file": "yaml", "tracing-config-file": "yaml",
        "egress-selector-config-file": "yaml", "token-auth-file": "file", "authorization-policy-file": "file",
        "audit-webhook-config-file": "kubeconfig", "authentication-token-webhook-config-file": "kubeconfig",
        "authorization-webhook-config-file": "kubeconfig"},
    "kube-controller-manager": {
        "kubeconfig": "kubeconfig", "authentication-kubeconfig": "kubeconfig",
        "authorization-kubeconfig": "kubeconfig", "root-ca-file": "ca", "client-ca-file": "ca",
        "requestheader-client-ca-file": "ca", "service-account-private-key-file": "privkey",
        "leader-migration-config": "yaml"},
    "kube-scheduler": {
        "kubeconfig": "kubeconfig", "authentication-kubeconfig": "kubeconfig",
        "authorization-kubeconfig": "kubeconfig", "client-ca-file": "ca", "requestheader-client-ca-file": "ca"},
    "kubelet": {"kubeconfig": "kubeconfig", "client-ca-file": "ca"},
    "kube-proxy": {"kubeconfig": "kubeconfig"},
}


class Run:
    """One stand-in run: the component, its flags and the kubeconfig it talks to the apiserver with."""

    def __init__(self, spec: Spec, version: str, values: dict[str, list[str]]) -> None:
        self.spec, self.version, self.values = spec, version, values
        self.component = spec.component
        self.api = None  # common.Kubeconfig used to reach the apiserver

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, [default])[-1]

    def true(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        return default if value is None else value in ("1", "t", "T", "TRUE", "true", "True")


# ---- files ----------------------------------------------------------------------------------


def check_files(run: Run, pairs=None, files=None) -> None:
    for cert_flag, key_flag in PAIRS[run.component] if pairs is None else pairs:
        cert_path, key_path = run.get(cert_flag), run.get(key_flag)
        if not cert_path and not key_path:
            continue
        if not cert_path or not key_path:
            given, missing = (cert_flag, key_flag) if cert_path else (key_flag, cert_flag)
            raise Fatal(f"--{given} is given without --{missing}: give both")
        cert = cert_pair(cert_path, key_path, f"--{cert_flag}", f"--{key_flag}")
        check(f"--{cert_flag}={cert_path}: {describe(cert)}, matches --{key_flag}={key_path}")
    for flag, kind in (FILES[run.component] if files is None else files).items():
        for path in run.values.get(flag, []):
            check_file(run, f"--{flag}", path, kind)


def check_file(run: Run, what: str, path: str, kind: str) -> None:
    label = f"{what}={path}"
    if kind == "kubeconfig":
        parsed = kubeconfig(path, what)
        run.api = run.api or parsed  # the first one named is the one the component talks with
        return
    data = _read(path, what)
    if kind == "ca":
        certs = ca_bundle(data, label)
        check(f"{label}: CA bundle of {len(certs)} ({describe(certs[0])})")
    elif kind == "privkey":
        private_key(data, label)
        check(f"{label}: private key parses")
    elif kind == "pubkeys":
        check(f"{label}: {len(public_keys(data, label))} verification key(s) parse")
    elif kind == "encryption":
        check(f"{label}: {encryption_config(data, label)}")
    elif kind == "audit-policy":
        check(f"{label}: {audit_policy(data, label)}")
    elif kind in ("yaml", "config"):
        doc = load_yaml(data, label)
        if kind == "config":
            problems = run.spec.check_config(doc)
            if problems:
                raise Fatal(f"{label}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
            check(f"{label}: {run.spec.config.kind} with only keys {run.component} v{run.spec.version} knows")
        else:
            check(f"{label}: YAML parses")
    else:
        check(f"{label}: readable")


def require(run: Run, *flags: str) -> None:
    for flag in flags:
        if not run.get(flag):
            raise Fatal(f"--{flag} is required")


# ---- talking to etcd and the apiserver ----------------------------------------------------


def etcd_call(run: Run, url: str, path: str, body: dict, *, once: bool = False) -> dict:
    """POST to etcd's gRPC gateway (v3 JSON API) with the apiserver's etcd client certificate.

    ``once``: a single 2 s attempt (the live /readyz check); else retried while etcd is not up."""
    ctx = ssl.create_default_context(cafile=run.get("etcd-cafile"))
    if run.get("etcd-certfile"):
        ctx.load_cert_chain(run.get("etcd-certfile"), run.get("etcd-keyfile"))
    url, data = url.rstrip("/") + path, json.dumps(body).encode()
    status, data = (request(url, ctx, "POST", data, timeout=2) if once else
                    dial(url, ctx, method="POST", body=data, what=f"etcd {url}"))
    if status != 200:
        raise Refused(f"HTTP {status}: {data[:200].decode(errors='replace')}")
    return json.loads(data)


def check_etcd(run: Run) -> None:
    reachable = 0
    for url in run.get("etcd-servers").split(","):
        if urlsplit(url).scheme != "https":
            raise Fatal(f"--etcd-servers: {url} is not https:// (hardway's etcd speaks TLS only)")
        try:
            status = etcd_call(run, url, "/v3/maintenance/status", {})
        except Refused as exc:
            hint = "" if "serving certificate" in str(exc) else " (is it issued by the CA etcd trusts?)"
            raise Fatal(f"--etcd-servers: {url} refused --etcd-certfile={run.get('etcd-certfile')}: {exc}{hint}") \
                from None
        except TimeoutError as exc:
            warn(f"--etcd-servers: {exc}")
            continue
        reachable += 1
        check(f"--etcd-servers: {url} answers over TLS with --etcd-certfile (etcd {status.get('version')}, "
              f"leader {status.get('leader')})")
    if not reachable:
        raise Fatal(f"--etcd-servers: no endpoint answered within {DIAL_TIMEOUT:.0f}s")


def etcd_ready(run: Run) -> tuple[bool, str]:
    errors = []
    for url in run.get("etcd-servers").split(","):
        try:
            etcd_call(run, url, "/v3/kv/range", {"key": base64.b64encode(b"health").decode()}, once=True)
            return True, f"etcd {url}"
        except (Refused, TimeoutError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
    return False, "; ".join(errors)


def dial_apiserver(run: Run, fatal: bool) -> None:
    kc = run.api
    server = run.get("master") or kc.server
    try:
        with client_context(kc.ca_pem, kc.cert_pem, kc.key_pem) as ctx:
            status, body = dial(server.rstrip("/") + "/version", ctx, what=f"the apiserver at {server}")
        if status != 200:
            raise Refused(f"HTTP {status}")
        git = json.loads(body).get("gitVersion", "?")
        check(f"apiserver {server} accepts {kc.path}'s client certificate ({describe(kc.cert)}); serves {git}")
    except (Refused, TimeoutError, ValueError) as exc:
        if fatal:
            raise Fatal(f"--kubeconfig={kc.path}: apiserver {server}: {exc}") from None
        log(f"error: apiserver {server} with {kc.path}: {exc} (the real {run.component} keeps retrying)")


def serve_tls(run: Run, routes, client_ca: str | None, *, port: int, host: str | None = None,
              cert: str | None = None, key: str | None = None, cert_dir: str | None = None, audit=None) -> str:
    """Serve ``routes`` over TLS. The apiserver and the kubelet demand client certificates from
    ``client_ca``; the controller-manager and scheduler serve health paths to anyone, as the real ones do."""
    cert, key = cert or run.get("tls-cert-file"), key or run.get("tls-private-key-file")
    scratch = None
    if not cert:  # like the real component: self-signed, kept in --cert-dir if given, else in memory only
        scratch = None if cert_dir else tempfile.mkdtemp(prefix=f"{run.component}-")
        cert, key = self_signed(cert_dir or scratch, run.component)
        log(f"no serving certificate given: serving with a self-signed one ({cert_dir or 'in memory'}), "
            f"as {run.component} does")
    host = host or run.get("bind-address") or "0.0.0.0"
    ctx = server_context(cert, key, client_ca)
    if scratch:
        shutil.rmtree(scratch)
    if client_ca and run.component not in ("kube-apiserver", "kubelet"):
        ctx.verify_mode = ssl.CERT_OPTIONAL
    serve(host, port, routes, run.component, ctx, audit)
    who = f"client certificates from {client_ca} required" if ctx.verify_mode == ssl.CERT_REQUIRED else \
        "no client certificate required"
    return f"https://{host}:{port} {' '.join(sorted(routes))} ({who})"


def text(ok: bool, detail: str = "") -> tuple[int, str, str]:
    return (200, "text/plain", "ok") if ok else (500, "text/plain", f"{MARK} not ready: {detail}")


# ---- the five contracts -------------------------------------------------------------------


def apiserver(run: Run) -> list[str]:
    require(run, "etcd-servers", "service-account-issuer", "service-account-signing-key-file")
    check_files(run)
    signing = private_key(_read(run.get("service-account-signing-key-file"), "--service-account-signing-key-file"),
                          "--service-account-signing-key-file").public_key()
    verifiers = [k for path in run.values.get("service-account-key-file", [])
                 for k in public_keys(_read(path, "--service-account-key-file"), path)]
    if verifiers and signing.public_numbers() not in [k.public_numbers() for k in verifiers]:
        warn("--service-account-signing-key-file's public key is not among --service-account-key-file: "
             "tokens it signs will not verify")
    check_aggregation(run)
    audit = AuditLog(run) if run.get("audit-log-path") and run.get("audit-policy-file") else None
    check_etcd(run)
    client_ca = run.get("client-ca-file")
    if not client_ca:
        warn("no --client-ca-file: serving without demanding client certificates")

    def ready():
        ok, detail = etcd_ready(run)
        return text(ok, detail)

    routes = {"/healthz": ready, "/livez": lambda: text(True), "/readyz": ready,
              "/version": lambda: (200, "application/json", version_json(run.version))}
    return [serve_tls(run, routes, client_ca, port=int(run.get("secure-port", "6443")),
                      cert_dir=run.get("cert-dir", "/var/run/kubernetes"), audit=audit)]


def controller_manager(run: Run) -> list[str]:
    if not run.get("kubeconfig") and not run.get("master"):
        raise Fatal("--kubeconfig is required (outside a pod there is no in-cluster configuration)")
    check_files(run)
    if run.true("allocate-node-cidrs"):
        require(run, "cluster-cidr")
        cluster = ipaddress.ip_network(run.get("cluster-cidr").split(",")[0], strict=False)
        mask = int(run.get("node-cidr-mask-size") or (24 if cluster.version == 4 else 64))
        if mask < cluster.prefixlen:
            raise Fatal(f"--node-cidr-mask-size={mask} is larger than --cluster-cidr={cluster} (/{cluster.prefixlen})")
        check(f"--allocate-node-cidrs: /{mask} node CIDRs fit in --cluster-cidr={run.get('cluster-cidr')}")
    dial_apiserver(run, fatal=True)
    return [serve_tls(run, {"/healthz": lambda: text(True)}, run.get("client-ca-file"),
                      port=int(run.get("secure-port", "10257")))]


def scheduler(run: Run) -> list[str]:
    if run.get("config"):
        check_file(run, "--config", run.get("config"), "config")
        conf = load_yaml(_read(run.get("config"), "--config"), "--config")
        path = ((conf.get("clientConnection") or {}).get("kubeconfig")) if isinstance(conf, dict) else None
        if path:
            check_file(run, "--config clientConnection.kubeconfig", path, "kubeconfig")
    check_files(run)
    if run.api is None:
        raise Fatal("no kubeconfig: give --config with clientConnection.kubeconfig (or --kubeconfig)")
    dial_apiserver(run, fatal=True)
    routes = {p: (lambda: text(True)) for p in ("/healthz", "/livez", "/readyz")}
    return [serve_tls(run, routes, run.get("client-ca-file"), port=int(run.get("secure-port", "10259")))]


def wait_for_socket(endpoint: str, what: str) -> str:
    path = endpoint.removeprefix("unix://")
    deadline = time.monotonic() + DIAL_TIMEOUT
    while True:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(path)
                return path
            raise Fatal(f"{what}={endpoint}: {path} is not a socket")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise Fatal(f"{what}={endpoint}: {exc.strerror} after {DIAL_TIMEOUT:.0f}s: is containerd running?") \
                    from None
            time.sleep(0.5)


def kubelet(run: Run) -> list[str]:
    conf: dict = {}
    if run.get("config"):
        check_file(run, "--config", run.get("config"), "config")
        conf = load_yaml(_read(run.get("config"), "--config"), "--config") or {}
    check_files(run)  # flags win over the config file, as in the real kubelet
    cert = run.get("tls-cert-file") or conf.get("tlsCertFile")
    key = run.get("tls-private-key-file") or conf.get("tlsPrivateKeyFile")
    if cert and not run.get("tls-cert-file"):
        if not key:
            raise Fatal(f"--config={run.get('config')}: tlsCertFile is given without tlsPrivateKeyFile")
        serving = cert_pair(cert, key, "--config tlsCertFile", "--config tlsPrivateKeyFile")
        check(f"--config tlsCertFile={cert}: {describe(serving)}, matches tlsPrivateKeyFile={key}")
    client_ca = run.get("client-ca-file") or ((conf.get("authentication") or {}).get("x509") or {}).get("clientCAFile")
    if client_ca and not run.get("client-ca-file"):
        check_file(run, "--config authentication.x509.clientCAFile", client_ca, "ca")
    if cert and key and run.get("node-ip"):
        sans = san_ips(cert_pair(cert, key, "tlsCertFile", "tlsPrivateKeyFile"))
        missing = [ip for ip in run.get("node-ip").split(",") if ip not in sans]
        if missing:
            warn(f"serving certificate lacks IP SAN(s) {', '.join(missing)} of --node-ip: the apiserver dials "
                 "kubelets by InternalIP and will not verify it")
        else:
            check(f"serving certificate carries --node-ip {run.get('node-ip')} as IP SAN")
    endpoint = run.get("container-runtime-endpoint") or conf.get("containerRuntimeEndpoint") or \
        "unix:///run/containerd/containerd.sock"
    check(f"container runtime socket {wait_for_socket(endpoint, 'containerRuntimeEndpoint')} accepts connections")
    resolv = conf.get("resolvConf", "/etc/resolv.conf")
    if resolv and not os.path.exists(resolv):
        warn(f"resolvConf={resolv}: no such file (pods would get no DNS configuration)")
    if run.api is not None:
        name = run.get("hostname-override") or socket.gethostname()
        cns = [a.value for a in run.api.cert.subject if a.oid.dotted_string == "2.5.4.3"]
        if cns != [f"system:node:{name}"]:
            warn(f"kubeconfig client certificate CN {cns}, not system:node:{name}: the Node authorizer will refuse it")
        else:
            check(f"kubeconfig client certificate CN is system:node:{name}")
        in_background(dial_apiserver, run, False)
    routes = {"/healthz": lambda: text(True)}
    host, port = run.get("address") or conf.get("address", "0.0.0.0"), int(run.get("port") or conf.get("port", 10250))
    served = [serve_tls(run, routes, client_ca, host=host, port=port, cert=cert, key=key,
                        cert_dir=run.get("cert-dir", "/var/lib/kubelet/pki"))]
    hport = int(run.get("healthz-port") or conf.get("healthzPort", 10248))
    if hport:
        hhost = run.get("healthz-bind-address") or conf.get("healthzBindAddress", "127.0.0.1")
        serve(hhost, hport, routes, run.component, None)
        served.append(f"http://{hhost}:{hport} /healthz")
    return served


def proxy(run: Run) -> list[str]:
    conf: dict = {}
    if run.get("config"):
        check_file(run, "--config", run.get("config"), "config")
        conf = load_yaml(_read(run.get("config"), "--config"), "--config") or {}
        path = (conf.get("clientConnection") or {}).get("kubeconfig")
        if path:
            check_file(run, "--config clientConnection.kubeconfig", path, "kubeconfig")
    check_files(run)
    if run.api is None:
        raise Fatal("no kubeconfig: give --config with clientConnection.kubeconfig (or --kubeconfig)")
    in_background(dial_apiserver, run, False)
    address = run.get("healthz-bind-address") or conf.get("healthzBindAddress") or "0.0.0.0:10256"
    host, _, port = address.rpartition(":")

    def healthz():
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return 200, "application/json", json.dumps({"lastUpdated": now, "currentTime": now, "standIn": True})

    serve(host.strip("[]"), int(port), {"/healthz": healthz, "/livez": healthz}, run.component, None)
    return [f"http://{address} /healthz /livez"]


CONTRACTS = {"kube-apiserver": apiserver, "kube-controller-manager": controller_manager,
             "kube-scheduler": scheduler, "kubelet": kubelet, "kube-proxy": proxy}


def main(spec_data: dict, component: str, version: str, argv: list[str] | None = None) -> int:
    spec = Spec.from_dict(spec_data)
    args = sys.argv[1:] if argv is None else argv
    if any(a == "--version" or a.startswith("--version=") for a in args):
        raw = next((a for a in args if a.startswith("--version=")), "--version=true").split("=", 1)[1]
        print(version_json(version) if raw == "raw" else f"Kubernetes v{version}-hardway-standin {MARK}")
        return 0
    if any(a in ("-h", "--help") for a in args):
        print(f"{MARK} {component} v{version}: a stand-in that checks the contract of the real binary; it is not "
              f"Kubernetes.\n\nUsage:\n  {component} [flags]\n\nFlags ({component} v{spec.version}):\n{spec.usage()}")
        return 0
    log(f"{component} v{version}: a stand-in that checks the contract hardway relies on; it is not Kubernetes")
    values, issues = spec.parse_argv(args)
    for issue in issues:
        if not issue.fatal:
            warn(issue.message)
    fatal = [i for i in issues if i.fatal]
    for issue in fatal:
        log(f"error: {issue.message}")
    if fatal:
        return 1
    check(f"{len(values)} flags known to {component} v{spec.version}, every value well formed")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        served = CONTRACTS[component](Run(spec, version, values))
    except Fatal as exc:
        log(f"error: {exc}")
        return 1
    except Exception as exc:  # a stand-in bug must still be one line and fail the unit
        log(f"error: stand-in failure: {exc.__class__.__name__}: {exc}")
        return 1
    for line in served:
        log(f"serving {line}")
    log("ready")
    stop.wait()
    log("stopping on signal")
    return 0
