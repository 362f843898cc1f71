"""Stand-in runtime, part 1: logging, PEM and kubeconfig checks, TLS clients and servers.

This file is not imported by hardway at run time: ``hardway.standins`` inlines it (after
``hardway/flagspec.py``, before ``components.py``) into one self-contained program per component that
runs on lab nodes with Debian's /usr/bin/python3 (3.11, python3-yaml, python3-cryptography 38). So:
standard library, yaml and cryptography only; lines ending in "# inlined" are dropped by the builder.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MARK = "(stand-in)"
# How long to wait for a peer (etcd, the apiserver, the CRI socket) that is not up yet.
DIAL_TIMEOUT = float(os.environ.get("HARDWAY_STANDIN_DIAL_TIMEOUT", "60"))


class Fatal(Exception):
    """A contract violation: one line naming the flag or file, then exit 1."""


def log(message: str) -> None:
    print(f"{MARK} {message}", flush=True)


def in_background(target: Callable[..., object], *args: object) -> None:
    """Run ``target`` in a daemon thread; whatever it raises becomes one log line, not a traceback."""
    def guarded() -> None:
        try:
            target(*args)
        except Exception as exc:  # a background check must not print a traceback into the journal
            log(f"error: {exc.__class__.__name__}: {exc}")
    threading.Thread(target=guarded, daemon=True).start()


def check(message: str) -> None:
    """A contract check that passed: the startup log lists each one."""
    log(f"check ok: {message}")


def warn(message: str) -> None:
    log(f"warning: {message}")


# ---- PEM material ---------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise Fatal(f"{what}={path}: no such file") from None
    except OSError as exc:
        raise Fatal(f"{what}={path}: cannot read: {exc.strerror}") from None
    if not data.strip():
        raise Fatal(f"{what}={path}: file is empty")
    return data


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    aware = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    return aware or cert.not_valid_after.replace(tzinfo=datetime.UTC)


def _not_before(cert: x509.Certificate) -> datetime.datetime:
    aware = getattr(cert, "not_valid_before_utc", None)
    return aware or cert.not_valid_before.replace(tzinfo=datetime.UTC)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def describe(cert: x509.Certificate) -> str:
    return f"CN={common_name(cert) or '(no CN)'}, valid until {_not_after(cert):%Y-%m-%d}"


def certs_from(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in PEM ``data``; the first is the leaf of a chain. Expired ones are fatal."""
    blocks = [b"-----BEGIN CERTIFICATE-----" + part for part in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    if not blocks:
        raise Fatal(f"{what}: no PEM certificate in it")
    certs = []
    now = datetime.datetime.now(datetime.UTC)
    for block in blocks:
        try:
            cert = x509.load_pem_x509_certificate(block)
        except ValueError as exc:
            raise Fatal(f"{what}: unparseable certificate ({exc})") from None
        if _not_after(cert) < now:
            raise Fatal(f"{what}: certificate {describe(cert)} has expired")
        if _not_before(cert) > now:
            raise Fatal(f"{what}: certificate {describe(cert)} is not valid yet")
        certs.append(cert)
    return certs


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def ca_bundle(data: bytes, what: str) -> list[x509.Certificate]:
    certs = certs_from(data, what)
    if not any(is_ca(c) for c in certs):
        raise Fatal(f"{what}: no CA certificate in it (basicConstraints CA:TRUE)")
    return certs


def private_key(data: bytes, what: str):
    if b"PRIVATE KEY-----" not in data:
        raise Fatal(f"{what}: no PEM private key in it")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise Fatal(f"{what}: unparseable private key ({exc})") from None


def public_keys(data: bytes, what: str) -> list:
    """Public keys from PEM public keys, private keys or certificates (service-account key files)."""
    keys = []
    for block in data.split(b"-----BEGIN ")[1:]:
        pem = b"-----BEGIN " + block
        try:
            if pem.startswith(b"-----BEGIN CERTIFICATE"):
                keys.append(x509.load_pem_x509_certificate(pem).public_key())
            elif b"PRIVATE KEY-----" in pem.split(b"\n", 1)[0]:
                keys.append(serialization.load_pem_private_key(pem, password=None).public_key())
            else:
                keys.append(serialization.load_pem_public_key(pem))
        except (ValueError, TypeError) as exc:
            raise Fatal(f"{what}: unparseable PEM block ({exc})") from None
    if not keys:
        raise Fatal(f"{what}: no PEM key in it")
    return keys


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_key(cert: x509.Certificate, key) -> bool:
    return _spki(cert.public_key()) == _spki(key.public_key())


def cert_pair(cert_path: str, key_path: str, cert_what: str, key_what: str) -> x509.Certificate:
    """Load a certificate and its key; fatal unless both parse and the key is the certificate's."""
    cert = certs_from(_read(cert_path, cert_what), f"{cert_what}={cert_path}")[0]
    key = private_key(_read(key_path, key_what), f"{key_what}={key_path}")
    if not same_key(cert, key):
        raise Fatal(f"{key_what}={key_path} is not the key of {cert_what}={cert_path} ({describe(cert)}): "
                    "give the key that belongs to that certificate")
    return cert


def signed_by(cert: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)  # cryptography >= 40
            return True
        except AttributeError:  # Debian's cryptography 38: compare names only
            if cert.issuer == ca.subject:
                return True
        except Exception:  # InvalidSignature, ValueError, TypeError: not issued by this CA
            continue
    return False


def san_ips(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]


# ---- kubeconfigs ----------------------------------------------------------------------------


@dataclass
class Kubeconfig:
    path: str
    server: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate


def _data_or_file(entry: dict, key: str, base: Path, what: str) -> bytes | None:
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(entry[f"{key}-data"], validate=True)
        except (ValueError, TypeError):
            raise Fatal(f"{what}: {key}-data is not base64") from None
    if entry.get(key):
        path = Path(entry[key])
        return _read(str(path if path.is_absolute() else base / path), f"{what} {key}")
    return None


def kubeconfig(path: str, what: str) -> Kubeconfig:
    """Parse a kubeconfig; fatal unless its current context has a server, a CA and a matching cert/key."""
    label = f"{what}={path}"
    try:
        doc = yaml.safe_load(_read(path, what))
    except yaml.YAMLError as exc:
        raise Fatal(f"{label}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("kind", "Config") != "Config":
        raise Fatal(f"{label}: not a kubeconfig (kind: Config)")

    def named(section: str, name: str) -> dict:
        for item in doc.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise Fatal(f"{label}: {section[:-1]} {name!r} (named by context {doc.get('current-context')!r}) missing")

    ctx_name = doc.get("current-context")
    if not ctx_name:
        raise Fatal(f"{label}: no current-context")
    ctx = named("contexts", ctx_name)
    cluster, user = named("clusters", ctx.get("cluster", "")), named("users", ctx.get("user", ""))
    base = Path(path).parent
    server = str(cluster.get("server") or "")
    if urlsplit(server).scheme != "https" or not urlsplit(server).hostname:
        raise Fatal(f"{label}: cluster server {server!r} is not an https:// URL")
    ca_pem = _data_or_file(cluster, "certificate-authority", base, label)
    if ca_pem is None:
        raise Fatal(f"{label}: cluster {ctx.get('cluster')!r} has no certificate-authority(-data)")
    cas = ca_bundle(ca_pem, f"{label} certificate-authority")
    cert_pem = _data_or_file(user, "client-certificate", base, label)
    key_pem = _data_or_file(user, "client-key", base, label)
    if cert_pem is None or key_pem is None:
        raise Fatal(f"{label}: user {ctx.get('user')!r} has no client certificate and key")
    cert = certs_from(cert_pem, f"{label} client-certificate")[0]
    if not same_key(cert, private_key(key_pem, f"{label} client-key")):
        raise Fatal(f"{label}: client-key is not the key of client-certificate ({describe(cert)})")
    if not signed_by(cert, cas):
        warn(f"{label}: client certificate {describe(cert)} is not signed by the kubeconfig's CA")
    check(f"{label}: server {server}, CA parses, client certificate {describe(cert)} matches its key")
    return Kubeconfig(path, server, ca_pem, cert_pem, key_pem, cert)


# ---- TLS clients ----------------------------------------------------------------------------


@contextlib.contextmanager
def client_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes):
    """An SSL context that verifies the server against ``ca_pem`` and presents the cert/key."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:  # load_cert_chain wants files; 0700 dir
        cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        cert.write_bytes(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(cert, key)
    yield ctx


class Refused(Exception):
    """The peer answered but refused us (TLS or HTTP): retrying will not help."""


def request(url: str, ctx: ssl.SSLContext, method: str = "GET", body: bytes | None = None,
            timeout: float = 5.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except ssl.SSLCertVerificationError as exc:
        raise Refused(f"its serving certificate does not verify: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise Refused(f"TLS refused: {exc.reason or exc}") from None
    except ConnectionResetError:
        raise Refused("connection reset during TLS (client certificate refused?)") from None
    finally:
        conn.close()


def dial(url: str, ctx: ssl.SSLContext, *, method: str = "GET", body: bytes | None = None,
         timeout: float | None = None, what: str = "") -> tuple[int, bytes]:
    """``request`` retried while the peer is not up (refused connection, timeout), up to ``timeout``."""
    deadline = time.monotonic() + (DIAL_TIMEOUT if timeout is None else timeout)
    announced = False
    while True:
        try:
            return request(url, ctx, method, body)
        except OSError as exc:  # refused, unreachable, timed out: not up yet
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{url}: not reachable ({exc})") from None
            if not announced:
                log(f"waiting for {what or url} ({exc.__class__.__name__}); retrying")
                announced = True
            time.sleep(0.1)  # a refused connect on the node is cheap; the peer may be up any moment


def load_yaml(data: bytes, label: str):
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise Fatal(f"{label}: not YAML ({str(exc).splitlines()[0]})") from None


# ---- servers --------------------------------------------------------------------------------

Route = Callable[[], tuple[int, str, str]]  # -> (status, content type, body)


def _handler(routes: dict[str, Route], component: str, audit=None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"{component}-standin"

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain", (
                    f"{MARK} {component} stand-in serves only {', '.join(sorted(routes))}: "
                    "checks that need a real Kubernetes API are skipped in the lab\n")
            else:
                status, ctype, body = route()
                if "verbose" in self.path and ctype == "text/plain":
                    body = f"{body}\n{MARK} {component} stand-in\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Hardway-Stand-In", component)
            self.end_headers()
            self.wfile.write(data)
            if audit is not None:  # the apiserver's audit log: one event per request served
                audit(self, status)

        def log_message(self, fmt: str, *args: object) -> None:  # no access log: health checks poll
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def handle_error(self, request, client_address) -> None:  # one line, never a traceback
        log(f"error serving {client_address[0]}: {sys.exc_info()[1]!r}")

    def finish_request(self, request, client_address) -> None:  # in the request's own thread
        if self.tls is None:
            return super().finish_request(request, client_address)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            if "CERTIFICATE" in str(reason).upper():  # not every dropped health-check connection
                log(f"refused TLS from {client_address[0]}: {reason}")
            return None
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()
        return None


def serve(host: str, port: int, routes: dict[str, Route], component: str, tls: ssl.SSLContext | None,
          audit=None) -> _Server:
    """Start an HTTP(S) server in a thread; fatal if the address cannot be bound."""
    family = socket.AF_INET6 if host and ipaddress.ip_address(host).version == 6 else socket.AF_INET
    server_cls = type("Server", (_Server,), {"address_family": family, "tls": tls})
    try:
        server = server_cls((host, port), _handler(routes, component, audit))
    except OSError as exc:
        raise Fatal(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def server_context(cert_path: str, key_path: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


def self_signed(directory: str, name: str) -> tuple[str, str]:
    """A self-signed serving pair, as the real components make when given no --tls-cert-file."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path, key_path = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


def version_json(version: str) -> str:
    major, minor = version.split(".")[:2]
    return json.dumps({"major": major, "minor": minor, "gitVersion": f"v{version}-hardway-standin",
                       "gitCommit": "stand-in", "gitTreeState": "stand-in", "buildDate": "stand-in",
                       "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor}",
                       "compiler": "stand-in", "platform": f"{sys.platform}/stand-in"}, indent=2)
