"""HTTPS from the jumpbox to an apiserver or the load balancer: what a client really sees.

One request per call, over a fresh connection (as a health probe or a new client would make it),
with the admin certificate and the cluster CA. The outcome says which layer failed, because each
has its own cause: nothing listening, a load balancer that accepts but forwards nowhere, a served
certificate that does not name the address dialed, or an HTTP answer that is not 200.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

REFUSED, NO_ROUTE, NO_TLS, NAME, UNTRUSTED, HTTP, OK = (
    "refused", "no-route", "no-tls", "name", "untrusted", "http", "ok")


@dataclass(frozen=True)
class Probe:
    kind: str  # one of the constants above
    detail: str  # one line: what was seen
    status: int = 0
    body: str = ""
    sans: tuple[tuple[str, str], ...] = field(default=())  # the served certificate's, when one was seen
    standin: bool = False  # the server says it is a hardway stand-in

    @property
    def ok(self) -> bool:
        return self.kind == OK


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sans_of(der: bytes) -> tuple[tuple[str, str], ...]:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple([("DNS", d) for d in san.get_values_for_type(x509.DNSName)]
                 + [("IP", str(ipaddress.ip_address(i))) for i in san.get_values_for_type(x509.IPAddress)])


def get(host: str, port: int, path: str, ca: Path | None, client: tuple[Path, Path] | None, *,
        check_name: bool = True, timeout: float = 5.0) -> Probe:
    """GET ``path`` from ``host:port``; the server must present a certificate from ``ca`` that names
    ``host`` (unless ``check_name`` is off: then the SANs are still reported). ``ca`` None: a self-signed
    server (the controller manager's and scheduler's own health port), nothing verified."""
    where = host_port(host, port)
    ctx = ssl.create_default_context(cafile=str(ca)) if ca is not None else ssl._create_unverified_context()
    ctx.check_hostname = False  # checked below, so a wrong name is told apart from an unknown CA
    check_name = check_name and ca is not None
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Probe(REFUSED, f"{where}: connection refused (nothing listens there)")
    except OSError as exc:
        return Probe(NO_ROUTE, f"{where}: not reachable from here ({exc.strerror or exc})")
    try:
        with raw, ctx.wrap_socket(raw, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            sans = sans_of(der) if der else ()
            want = ("IP", str(ipaddress.ip_address(host))) if _is_ip(host) else ("DNS", host)
            if check_name and want not in sans:
                valid = ", ".join(v for _, v in sans) or "no name"
                return Probe(NAME, f"{where}: x509: certificate is valid for {valid}, not {host}", sans=sans)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except ssl.SSLCertVerificationError as exc:
        return Probe(UNTRUSTED, f"{where}: its certificate does not verify against {ca}: {exc.verify_message}")
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        return Probe(NO_TLS, f"{where}: accepted the connection but closed it before TLS (no server behind it?)")
    except ssl.SSLError as exc:
        return Probe(NO_TLS, f"{where}: TLS failed: {exc.reason or exc}")
    except OSError as exc:
        return Probe(NO_ROUTE, f"{where}: {exc.strerror or exc}")
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status_line = head.splitlines()[0] if head else ""
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    standin = "x-hardway-stand-in:" in head.lower()
    text = body.strip().splitlines()[0][:160] if body.strip() else ""
    if status != 200:
        return Probe(HTTP, f"{where}{path}: HTTP {status or '?'} {text}".rstrip(), status, body, sans, standin)
    return Probe(OK, f"{where}{path}: {text or 'ok'}", status, body, sans, standin)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
