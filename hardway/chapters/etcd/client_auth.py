"""Client authentication, tested from the jumpbox: a client without a certificate, and one with a
certificate from another CA, must both be refused by a member's client port."""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

from hardway.chapters.pki import throwaway_client
from hardway.checks import FAIL, OK, WARN, CheckResult
from hardway.inventory import Inventory, Node
from hardway.state import PkiState

CHAPTER = "etcd"


def client_auth_results(inv: Inventory, state: PkiState, node: Node) -> list[CheckResult]:
    """A client without a certificate, and one with a certificate from another CA, must be refused."""
    res: list[CheckResult] = []
    host, port = str(node.address), 2379
    with tempfile.TemporaryDirectory(prefix="hardway-authcheck-") as tmp:
        foreign_cert, foreign_key = throwaway_client(Path(tmp), inv.key_algorithm)
        for label, cert in (("no client certificate", None), ("a certificate from another CA",
                                                               (foreign_cert, foreign_key))):
            outcome = _tls_request(host, port, state.cert("ca"), cert)
            if outcome == "refused":
                res.append(CheckResult(CHAPTER, "client-auth", node.name, OK, f"a client with {label} is refused"))
            elif outcome == "unreachable":
                res.append(CheckResult(CHAPTER, "client-auth", node.name, WARN,
                                  f"could not reach {host}:{port} from here to test a client with {label}",
                                  "run verify from a host that reaches the controllers' client port"))
            else:
                res.append(CheckResult(CHAPTER, "client-auth", node.name, FAIL,
                                  f"a client with {label} was served: {outcome}",
                                  "the unit must pass --client-cert-auth and --trusted-ca-file; push the "
                                  "rendered unit (`invoke bootstrap-etcd`)"))
    return res


def _tls_request(host: str, port: int, ca: Path, client: tuple[Path, Path] | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # we test client auth, not the server's SAN (pki tests cover that)
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = tls.recv(200)
    except ssl.SSLError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "refused"
    except OSError:
        return "unreachable"
    if not data:
        return "refused"
    return data.decode(errors="replace").splitlines()[0]
