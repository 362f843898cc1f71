"""The load balancer in front of the apiservers: Debian's HAProxy on each node with the loadbalancer role.

HAProxy runs under hardway's own unit (``kube-apiserver-lb``) with hardway's config, so the packaged
``haproxy.service`` and ``/etc/haproxy/haproxy.cfg`` are never touched. TCP mode: TLS passes through,
clients see each apiserver's own certificate. It binds the endpoint port on every address of its node,
so moving ``api_endpoint.address`` to another address of the node needs no reload. Each apiserver is
health-checked on ``/readyz`` over TLS with a low-privilege client certificate.

Before hardway restarts an apiserver it drains it here (runtime API: ``set server ... state drain``),
waits for its connections to end, restarts it, waits until it is ready, puts it back and waits until
HAProxy's own check says UP: a client of the load balancer sees no failed request.
"""

from __future__ import annotations

import csv
import shlex
import time
from dataclasses import dataclass

from hardway.chapters.control_plane.probes import host_port
from hardway.errors import HardwayError
from hardway.facts import Fact, FactOutput, gather
from hardway.inventory import Inventory
from hardway.paths import APISERVER_PORT, unit_file
from hardway.pki.catalogue import CA_NAME, LOADBALANCER
from hardway.planner import Planner
from hardway.remote import Remote

UNIT = "kube-apiserver-lb"
UNIT_PATH = unit_file(UNIT)
HAPROXY = "/usr/sbin/haproxy"  # Debian's package
CONFIG = f"/etc/haproxy/{UNIT}.cfg"
LB_DIR = f"/etc/haproxy/{UNIT}"
CA = f"{LB_DIR}/ca.crt"
HEALTH_CERT = f"{LB_DIR}/health.crt"
HEALTH_KEY = f"{HEALTH_CERT}.key"  # HAProxy loads <crt>.key when the PEM holds no key
SOCKET = f"/run/{UNIT}/admin.sock"
BACKEND = "kube-apiservers"
CHECK_INTERVAL = "1s"
DRAIN_S = 10.0  # how long a drained apiserver's connections may take to end before they are cut
POLL_S = 0.2


def bind(inv: Inventory) -> str:
    """Every address of the node, in the family of the endpoint."""
    port = inv.api_endpoint.port
    return f":::{port} v4v6" if inv.api_endpoint.address.version == 6 else f":{port}"


def haproxy_argv() -> list[str]:
    return [HAPROXY, "-Ws", "-f", CONFIG, "-p", f"/run/{UNIT}/haproxy.pid"]


def plan_files(p: Planner) -> None:
    svc = (UNIT,)
    p.pki(CA, p.state.cert(CA_NAME), svc)
    p.pki(HEALTH_CERT, p.state.cert(LOADBALANCER), svc)
    p.pki(HEALTH_KEY, p.state.key(LOADBALANCER), svc, secret=True)
    backends = [(c.name, host_port(str(c.address), APISERVER_PORT)) for c in p.inv.controllers]
    p.template(CONFIG, "configs/kube-apiserver-lb.cfg.j2", svc, node=p.node, bind=bind(p.inv), backends=backends,
               ca=CA, crt=HEALTH_CERT, socket=SOCKET, inter=CHECK_INTERVAL)
    p.template(UNIT_PATH, f"units/{UNIT}.service.j2", svc, node=p.node, inv=p.inv, argv=haproxy_argv(),
               check=[HAPROXY, "-f", CONFIG, "-c", "-q"])


# --- the runtime API -------------------------------------------------------------------------

# HAProxy's runtime API over its UNIX socket, with the node's python3 (Debian's HAProxy ships no client).
_CLIENT = ("import socket,sys\n"
           "s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
           "s.sendall(sys.argv[2].encode()+b'\\n'); out=b''\n"
           "while True:\n"
           "    b=s.recv(65536)\n"
           "    if not b: break\n"
           "    out+=b\n"
           "sys.stdout.write(out.decode())\n")


def runtime(command: str) -> str:
    """A shell command sending ``command`` to the runtime API; exits 3 when HAProxy is not running."""
    return (f"[ -S {SOCKET} ] || {{ echo 'no {SOCKET}: {UNIT} is not running'; exit 3; }}; "
            f"python3 -c {shlex.quote(_CLIENT)} {SOCKET} {shlex.quote(command)}")


@dataclass(frozen=True)
class Server:
    """One apiserver as HAProxy sees it."""

    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/2", "no check", ...
    sessions: int
    check: str  # last check status (L7OK, L4CON, L6RSP, ...) and its description

    @property
    def up(self) -> bool:
        return self.status == "UP"


def parse_stat(out: FactOutput) -> dict[str, Server] | None:
    """``show stat`` (CSV) -> the backend's servers; None when HAProxy did not answer."""
    if not out.ok or not out.stdout.startswith("# "):
        return None
    rows = csv.DictReader(out.stdout[2:].splitlines())
    found = {}
    for row in rows:
        if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND", None):
            check = " ".join(x for x in (row.get("check_status", ""), row.get("check_desc", "")) if x)
            found[row["svname"]] = Server(row["svname"], row.get("status", ""), int(row.get("scur") or 0), check)
    return found


STAT: Fact[dict[str, Server] | None] = Fact("lb_stat", runtime("show stat"), parse_stat)


def servers(r: Remote) -> dict[str, Server] | None:
    return gather(r, [STAT])[STAT]


def _set_state(r: Remote, server: str, state: str) -> None:
    out = r.run(runtime(f"set server {BACKEND}/{server} state {state}"), check=False)
    if out.exit_code != 0 or out.stdout.strip():
        raise HardwayError(f"{r.node.name}: HAProxy refused to set {BACKEND}/{server} to {state}: "
                           f"{(out.stdout or out.stderr).strip()[:200]}")


def take_out(r: Remote, server: str, timeout: float = DRAIN_S) -> bool:
    """Drain ``server`` (no new connections) and wait until its connections have ended, cutting what is
    left after ``timeout`` (long watches: clients reconnect through the others). Drain, not maintenance:
    maintenance marks the server down, and ``on-marked-down shutdown-sessions`` would cut a request in
    flight. False if this load balancer is not running, so there is nothing to take it out of."""
    seen = servers(r)
    if seen is None:
        return False
    if server not in seen:
        raise HardwayError(f"{r.node.name}: HAProxy has no server {BACKEND}/{server}; its config is not the "
                           "rendered one (run `invoke bootstrap-control-plane`)")
    _set_state(r, server, "drain")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = servers(r) or {}
        if server not in now or now[server].sessions == 0:
            return True
        time.sleep(POLL_S)
    r.run(runtime(f"shutdown sessions server {BACKEND}/{server}"), check=False)
    return True


def put_back(r: Remote, server: str, timeout: float) -> None:
    """Back into rotation, then wait until HAProxy's own health check says UP."""
    _set_state(r, server, "ready")
    wait_up(r, [server], timeout)


def wait_up(r: Remote, names: list[str], timeout: float) -> dict[str, Server]:
    """Until HAProxy reports every named server UP; raise naming the ones that are not."""
    t0 = time.monotonic()
    seen: dict[str, Server] | None = None
    while time.monotonic() - t0 < timeout:
        seen = servers(r)
        if seen is not None and all(seen.get(n) is not None and seen[n].up for n in names):
            return seen
        time.sleep(POLL_S)
    if seen is None:
        raise HardwayError(f"{r.node.name}: {UNIT} does not answer on {SOCKET}; see `journalctl -u {UNIT}` there")
    bad = [f"{n} {seen[n].status} ({seen[n].check})" if n in seen else f"{n} missing" for n in names
           if n not in seen or not seen[n].up]
    raise HardwayError(f"{r.node.name}: HAProxy does not see {', '.join(bad)} UP after {timeout:.0f}s, so it "
                       "forwards nothing there; run `invoke verify --chapter control-plane` for the cause")
