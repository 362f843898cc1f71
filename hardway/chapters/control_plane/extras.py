"""Checks of what hardway adds beyond the tutorial's control plane: the audit log is being written, and
the aggregation layer's flags and files agree (so an extension apiserver such as metrics-server would
accept what the apiserver proxies to it)."""

from __future__ import annotations

import shlex

from cryptography import x509
from cryptography.x509.oid import NameOID

from hardway.chapters.control_plane.files import CA, FRONT_PROXY_CA, FRONT_PROXY_CERT, kube_apiserver_argv
from hardway.checks import FAIL, OK, WARN, CheckResult
from hardway.facts import Fact, FactOutput
from hardway.files import File
from hardway.inventory import Inventory, Node

CHAPTER = "control-plane"
FIX = "`invoke bootstrap-control-plane`"
FRESH_S = 300  # HAProxy's health checks and verify's own probes are audited: a live log is seconds old


def _parse_audit(out: FactOutput) -> tuple[int, int, int] | None:
    """(size, mtime, now) on the node's clock, None if the log is missing."""
    words = out.stdout.split()
    if len(words) != 3 or not all(w.isdigit() for w in words):
        return None
    return int(words[0]), int(words[1]), int(words[2])


def audit_fact(inv: Inventory) -> Fact[tuple[int, int, int] | None]:
    path = shlex.quote(inv.audit.log_path)
    return Fact("audit_log", f"s=$(stat -c '%s %Y' -- {path} 2>/dev/null) || s=missing; echo \"$s $(date +%s)\"",
                _parse_audit, (inv.audit.log_path,))


def judge_audit(inv: Inventory, node: Node, seen: tuple[int, int, int] | None, standin: bool) -> CheckResult:
    path, who = inv.audit.log_path, "kube-apiserver (stand-in)" if standin else "kube-apiserver"
    if seen is None:
        return CheckResult(CHAPTER, "audit-log", node.name, FAIL, f"{path} is missing: {who} writes no audit log",
                           f"{FIX} (the unit needs --audit-policy-file and --audit-log-path); then "
                           f"`journalctl -u kube-apiserver` on {node.name}")
    size, mtime, now = seen
    if size == 0 or now - mtime > FRESH_S:
        return CheckResult(CHAPTER, "audit-log", node.name, WARN,
                           f"{path}: {size} bytes, last written {now - mtime}s ago: {who} is not logging requests",
                           f"is kube-apiserver running on {node.name}? `invoke verify --chapter control-plane` again "
                           "after a request")
    return CheckResult(CHAPTER, "audit-log", node.name, OK,
                       f"{path}: {size} bytes, written {now - mtime}s ago by {who}")


def _flag(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def judge_aggregation(inv: Inventory, node: Node, files: list[File]) -> CheckResult:
    """Pure: the unit's --requestheader-* / --proxy-client-* flags name the files planned for the node;
    the proxy client is signed by the request-header CA (not the cluster CA) and its CN is allowed.
    (That the node holds exactly the planned files is the ``files`` check.)"""
    argv = kube_apiserver_argv(inv, node)
    by_path = {f.path: f for f in files}

    def fail(detail: str) -> CheckResult:
        return CheckResult(CHAPTER, "aggregation", node.name, FAIL, detail,
                           f"`invoke pki` issues the front-proxy CA and client; then {FIX}")

    ca_path, cert_path = _flag(argv, "requestheader-client-ca-file"), _flag(argv, "proxy-client-cert-file")
    if ca_path is None or cert_path is None:
        return fail("the apiserver unit has no --requestheader-client-ca-file/--proxy-client-cert-file: "
                    "no extension apiserver (metrics-server, kubectl top) can work")
    missing = [p for p in (ca_path, cert_path, _flag(argv, "proxy-client-key-file")) if p not in by_path]
    if missing:
        return fail(f"{', '.join(p or '?' for p in missing)}: named by the apiserver unit, not planned for the node")
    try:
        ca = x509.load_pem_x509_certificate(by_path[ca_path].data())
        cert = x509.load_pem_x509_certificate(by_path[cert_path].data())
    except ValueError:
        return fail(f"{ca_path} or {cert_path}: not a PEM certificate, though the apiserver's flags name it as one")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, ValueError, TypeError: issued by another CA
        return fail(f"{cert_path} (CN={_cn(cert)}) is not signed by --requestheader-client-ca-file={ca_path} "
                    f"(CN={_cn(ca)}): extension apiservers would refuse every proxied request")
    cluster_ca = by_path.get(CA)
    if cluster_ca is not None and cluster_ca.data() == by_path[ca_path].data():
        return fail(f"{ca_path} is the cluster CA: any client certificate could pose as the front proxy")
    allowed = (_flag(argv, "requestheader-allowed-names") or "").split(",")
    if _cn(cert) not in allowed:
        return fail(f"{cert_path}: CN {_cn(cert)!r} is not in --requestheader-allowed-names={','.join(allowed)}")
    routing = "--enable-aggregator-routing=true" in argv
    where = "kube-proxy runs here: Service IPs route" if node.is_worker else \
        "no kube-proxy here: --enable-aggregator-routing=true (endpoint IPs)"
    if routing == node.is_worker:
        return fail(f"--enable-aggregator-routing is {'set' if routing else 'missing'} but "
                    f"{'kube-proxy runs' if node.is_worker else 'no kube-proxy runs'} on {node.name}")
    return CheckResult(CHAPTER, "aggregation", node.name, OK,
                       f"{FRONT_PROXY_CERT} (CN={_cn(cert)}) signed by {FRONT_PROXY_CA} (CN={_cn(ca)}), CN allowed; "
                       f"{where}")
