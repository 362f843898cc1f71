"""Client authentication, tested from the jumpbox: a client without a certificate, one with a
certificate from another CA, and one with a worker's certificate (the cluster CA's) must all be
refused by a member's client port: etcd trusts its own CA alone."""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

from hardway.chapters.pki import throwaway_client
from hardway.checks import FAIL, OK, WARN, CheckResult
from hardway.inventory import Inventory, Node
from hardway.pki.catalogue import ETCD_CA_NAME
from hardway.state import PkiState

CHAPTER = "etcd"
UNVERIFIED = "server certificate does not verify"


def client_auth_results(inv: Inventory, state: PkiState, node: Node) -> list[CheckResult]:
    """A client without a certificate, one from another CA, and one from the cluster CA (what every
    worker holds: kube-proxy's) must all be refused."""
    res: list[CheckResult] = []
    host, port = str(node.address), 2379
    if not state.cert(ETCD_CA_NAME).is_file():  # a PKI made before etcd had a CA of its own
        return [CheckResult(CHAPTER, "client-auth", node.name, FAIL, f"no {state.cert(ETCD_CA_NAME)}: etcd still "
                            "trusts the cluster CA, and so every worker's certificate",
                            "`invoke pki` issues the etcd CA; `invoke rotate-certs` moves etcd to it")]
    with tempfile.TemporaryDirectory(prefix="hardway-authcheck-") as tmp:
        foreign_cert, foreign_key = throwaway_client(Path(tmp), inv.key_algorithm)
        for label, cert in (("no client certificate", None),
                            ("a certificate from another CA", (foreign_cert, foreign_key)),
                            ("a worker's certificate (kube-proxy, from the cluster CA)",
                             (state.cert("kube-proxy"), state.key("kube-proxy")))):
            outcome = _tls_request(host, port, state.cert(ETCD_CA_NAME), cert)
            if outcome == "refused":
                res.append(CheckResult(CHAPTER, "client-auth", node.name, OK, f"a client with {label} is refused"))
            elif outcome == "unreachable":
                res.append(CheckResult(CHAPTER, "client-auth", node.name, WARN,
                                  f"could not reach {host}:{port} from here to test a client with {label}",
                                  "run verify from a host that reaches the controllers' client port"))
            elif outcome == UNVERIFIED:
                res.append(CheckResult(CHAPTER, "client-auth", node.name, FAIL,
                                  f"{host}:{port} serves a certificate the etcd CA did not sign",
                                  "the member runs on certificates from before etcd had a CA of its own; "
                                  "`invoke rotate-certs` moves etcd over, one member at a time"))
                break
            else:
                res.append(CheckResult(CHAPTER, "client-auth", node.name, FAIL,
                                  f"a client with {label} was served: {outcome}",
                                  "the unit must pass --client-cert-auth and --trusted-ca-file with the etcd CA "
                                  "alone; `invoke rotate-certs` moves a one-CA cluster over, then "
                                  "`invoke bootstrap-etcd`"))
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
    except ssl.SSLCertVerificationError:
        return UNVERIFIED  # our side refused the server: says nothing about client auth
    except ssl.SSLError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "refused"
    except OSError:
        return "unreachable"
    if not data:
        return "refused"
    return data.decode(errors="replace").splitlines()[0]
