"""The etcd chapter's checks: facts from every member in one round trip each, judged purely."""

from __future__ import annotations

import json
import re
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hardway import remote
from hardway.chapters.base import Context
from hardway.chapters.etcd import ids
from hardway.chapters.etcd.files import UNIT, UNIT_PATH, ctl
from hardway.chapters.pki import throwaway_client
from hardway.checks import FAIL, OK, WARN, CheckResult
from hardway.facts import Fact, FactOutput, file_hashes, file_stats, gather, journal_since_start, unit_lint, unit_states
from hardway.files import File, stamps
from hardway.inventory import Inventory, Node
from hardway.pki.catalogue import ETCD_CA_NAME
from hardway.remote import Remote
from hardway.state import PkiState
from hardway.systemd import exec_words

CHAPTER = "etcd"

# Known failure signatures in the etcd journal -> (cause, fix).
SIGNATURES: tuple[tuple[str, str, str], ...] = (
    (r"request cluster ID mismatch",
     "a member's data dir belongs to another cluster (a stale member re-added)",
     "on the member whose data is stale: stop etcd, move {data_dir}/member aside, `etcdctl member remove` and "
     "`member add` it, and start it with --initial-cluster-state existing"),
    (r"has already been bootstrapped",
     "this member lost its data dir after it had joined the cluster",
     "`etcdctl member remove` it and `member add` it again, then start it with --initial-cluster-state existing"),
    (r"permanently removed from the cluster",
     "this member was removed from the cluster but still has its old data dir",
     "stop etcd, move {data_dir}/member aside, `member add` it again and start with "
     "--initial-cluster-state existing"),
    (r"sync duration of .* expected less than 1s|slow fdatasync",
     "the disk is too slow for etcd (fdatasync); leader elections will fail",
     "put {data_dir} on an SSD; bootstrap-etcd's preflight prints the measured fdatasync p99"),
    (r"no such file or directory",
     "a file the unit references is missing on the node",
     "run `invoke bootstrap-etcd` to push the missing file"),
    (r"Missing '='|Unknown key '--|Ignoring unknown escape sequences",
     "the unit file has a broken line continuation (a hand edit or a mangled heredoc)",
     "run `invoke bootstrap-etcd` to push the rendered unit again; do not hand-edit continuations"),
    (r"status=203/EXEC",
     "systemd could not execute the etcd binary: missing, not executable or the wrong architecture",
     "run `invoke bootstrap-etcd`: preflight checks the binary's architecture and pushes it"),
)


# --- facts -----------------------------------------------------------------------------------


def _text(out: FactOutput) -> str:
    return out.stdout


def _answer(out: FactOutput) -> tuple[bool, str]:
    return out.ok, out.stdout.strip()


def _json_or_none(out: FactOutput) -> object | None:
    if not out.ok:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


UNIT_TEXT: Fact[str] = Fact("unit_text", f"cat {UNIT_PATH} 2>/dev/null", _text, (UNIT_PATH,))


def health(inv: Inventory, node: Node) -> Fact[tuple[bool, str]]:
    """`etcdctl endpoint health` against the member itself: a linearizable read, so quorum too."""
    return Fact("etcd_health", ctl(inv, node, "endpoint health"), _answer, (node.name,))


def status(inv: Inventory, node: Node) -> Fact[object | None]:
    return Fact("etcd_status", ctl(inv, node, "endpoint status -w json"), _json_or_none, (node.name,))


def members(inv: Inventory, node: Node) -> Fact[object | None]:
    return Fact("etcd_members", ctl(inv, node, "member list -w json"), _json_or_none, (node.name,))


@dataclass
class MemberFacts:
    """What verify reads from one controller."""

    active: str = "unknown"
    files: dict[str, tuple[int, str, str] | None] = field(default_factory=dict)
    hashes: dict[str, str | None] = field(default_factory=dict)
    referenced: dict[str, bool] = field(default_factory=dict)  # path in ExecStart -> exists
    lint: str = ""
    journal: str = ""
    health: str = ""
    healthy: bool = False
    status: dict | None = None
    members: list[dict] | None = None


def gather_member(inv: Inventory, r: Remote, files: list[File]) -> MemberFacts:
    """Everything verify needs from one member, in one round trip (plus one if the unit names extra files)."""
    paths = [x.path for x in files]
    hashes, stats, states = file_hashes(paths, stamps(files)), file_stats(paths), unit_states((UNIT,))
    lint, journal = unit_lint([UNIT_PATH]), journal_since_start(UNIT)
    h, s, m = health(inv, r.node), status(inv, r.node), members(inv, r.node)
    v = gather(r, [states, hashes, stats, UNIT_TEXT, lint, journal, h, s, m], timeout=60)
    f = MemberFacts(active=v[states][UNIT].active)
    f.hashes = v[hashes]
    f.files = {p: (st.mode, st.owner, st.group) if st else None for p, st in v[stats].items()}
    f.lint = "\n".join(line for line in v[lint].splitlines() if "etcd" in line)
    f.journal = v[journal]
    f.healthy, f.health = v[h]
    st = v[s]
    f.status = st[0].get("Status") if isinstance(st, list) and st and isinstance(st[0], dict) else None
    ml = v[m]
    f.members = ml.get("members", []) if isinstance(ml, dict) else None
    referenced = sorted({w.split("=", 1)[-1] for w in exec_words(v[UNIT_TEXT])
                         if w.split("=", 1)[-1].startswith("/") and "," not in w} - set(paths))
    if referenced:  # a hand-edited unit naming files hardway does not plan
        found = gather(r, [file_stats(referenced)])[file_stats(referenced)]
        f.referenced = {p: found[p] is not None for p in referenced}
    for p in paths:  # planned files are judged by hashes/modes; record them as referenced-present too
        if f.files.get(p) is not None:
            f.referenced.setdefault(p, True)
    return f
def judge_member(inv: Inventory, node: Node, facts: MemberFacts, files: list[File]) -> list[CheckResult]:
    """Pure: one member's facts -> results (tested with hand-made facts)."""
    n = node.name
    res: list[CheckResult] = []

    def add(check: str, status: str, detail: str, hint: str = "") -> None:
        res.append(CheckResult(CHAPTER, check, n, status, detail, hint))

    add("unit-active", OK if facts.active == "active" else FAIL, f"etcd is {facts.active}",
        "see the journal findings below; `journalctl -u etcd` on the node")
    unit = next((x for x in files if x.path == UNIT_PATH), None)
    if unit is not None:
        got = facts.hashes.get(UNIT_PATH)
        if got is None:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} is missing", "run `invoke bootstrap-etcd`")
        elif got != unit.sha256:
            add("unit-matches-render", FAIL, f"{UNIT_PATH} differs from the rendered unit (hand-edited?)",
                "run `invoke bootstrap-etcd` to push the rendered unit and restart the member")
        else:
            add("unit-matches-render", OK, f"{UNIT_PATH} equals the rendered unit")
    if facts.lint:
        add("unit-lint", FAIL, "systemd says: " + " | ".join(facts.lint.splitlines()[:3]),
            "a broken line continuation or quoting; push the rendered unit (`invoke bootstrap-etcd`)")
    else:
        add("unit-lint", OK, "systemd-analyze verify: no warnings")
    for f in files:
        got_mode = facts.files.get(f.path)
        if got_mode is None:
            add("files", FAIL, f"{f.path} is missing", "run `invoke bootstrap-etcd` to push it")
        elif got_mode != (f.mode, f.owner, f.group):
            add("files", FAIL, f"{f.path} is {got_mode[0]:04o} {got_mode[1]}:{got_mode[2]}, want "
                               f"{f.mode:04o} {f.owner}:{f.group}", "run `invoke bootstrap-etcd` to fix it")
        elif facts.hashes.get(f.path) != f.sha256:
            add("files", FAIL, f"{f.path} differs from what hardway planned",
                "run `invoke bootstrap-etcd` (after `invoke pki` if certificates changed)")
    missing_refs = [p for p, ok in facts.referenced.items() if not ok]
    for p in missing_refs:
        add("files", FAIL, f"the unit references {p}, which does not exist", "run `invoke bootstrap-etcd`")
    if not any(r.check == "files" for r in res):
        add("files", OK, f"{len(files)} files present with the planned content and mode")
    add("endpoint-health", OK if facts.healthy else FAIL,
        (facts.health.splitlines() or ["no answer"])[-1][:160],
        "" if facts.healthy else "the member is down or cannot reach quorum; see the other results")
    seen = False
    for pattern, cause, fix in SIGNATURES:
        m = re.search(pattern, facts.journal)
        if m:
            seen = True
            line = next(ln for ln in facts.journal.splitlines() if re.search(pattern, ln))
            add("journal", FAIL, f"{cause}: “{line.strip()[:140]}”", fix.format(data_dir=inv.etcd.data_dir))
    if not seen:
        add("journal", OK, "no known failure signature since the unit last started")
    return res


def judge_cluster(inv: Inventory, facts: dict[str, MemberFacts]) -> list[CheckResult]:
    """Pure: cluster-wide results — membership and leadership."""
    res: list[CheckResult] = []
    want = {n.name: (inv.etcd_peer_url(n), ids.expected_member_id(inv, n)) for n in inv.controllers}
    members = next((f.members for f in facts.values() if f.members is not None), None)
    if members is None:
        res.append(CheckResult(CHAPTER, "members", "-", FAIL, "no member answered `member list`",
                          "the cluster has no quorum; start the stopped members (`invoke bootstrap-etcd`)"))
    else:
        got = {m.get("name") or f"(unstarted {int(m['ID']):x})": (",".join(m.get("peerURLs", [])), int(m["ID"]))
               for m in members}
        if got == want:
            res.append(CheckResult(CHAPTER, "members", "-", OK,
                              f"member list = the inventory's {len(want)} controllers (names, peer URLs, IDs)"))
        else:
            extra = sorted(set(got) - set(want))
            missing = sorted(set(want) - set(got))
            differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
            res.append(CheckResult(CHAPTER, "members", "-", FAIL,
                              f"member list differs from the inventory: extra {extra or '-'}, missing "
                              f"{missing or '-'}, different peer URL/ID {differ or '-'}",
                              "remove stale members with `etcdctl member remove`, add missing ones with "
                              "`member add`, or fix the inventory"))
    leaders = {f.status.get("leader") for f in facts.values() if f.status}
    leaders.discard(None)
    leaders.discard(0)
    answering = sum(1 for f in facts.values() if f.status)
    if len(leaders) == 1 and answering:
        leader = leaders.pop()
        name = next((n for n, (_, mid) in want.items() if mid == int(leader)), f"{int(leader):x}")
        res.append(CheckResult(CHAPTER, "leader", "-", OK, f"exactly one leader: {name} ({answering} members agree)"))
    else:
        res.append(CheckResult(CHAPTER, "leader", "-", FAIL,
                          f"{len(leaders)} leaders seen by {answering} answering members",
                          "no leader usually means no quorum or a disk too slow for elections "
                          "(`sync duration` in the journal)"))
    return res


def client_auth_results(inv: Inventory, state: PkiState, node: Node) -> list[CheckResult]:
    """A client without a certificate, one from another CA, and one from the cluster CA (what every
    worker holds: kube-proxy's) must all be refused: etcd trusts its own CA only."""
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


UNVERIFIED = "server certificate does not verify"


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


def verify(ctx: Context, files: dict[str, list[File]]) -> list[CheckResult]:
    """Every member's unit, files, health and journal; membership and leadership; client auth."""
    inv = ctx.inv
    outcomes = remote.fan_out(inv, inv.controllers, lambda r: gather_member(inv, r, files[r.node.name]),
                              connector=ctx.connector)
    results: list[CheckResult] = []
    facts: dict[str, MemberFacts] = {}
    for o in outcomes:
        if not o.ok or o.value is None:
            results.append(CheckResult(CHAPTER, "reachable", o.node.name, FAIL, o.error or "unreachable",
                                       "start the machine / fix SSH; the other members keep quorum only if a "
                                       "majority is up"))
            continue
        facts[o.node.name] = o.value
        results.extend(judge_member(inv, o.node, o.value, files[o.node.name]))
    results.extend(judge_cluster(inv, facts))
    # ask a member that is serving, so a stopped one does not turn this check into "unreachable"
    probe = next((n for n in inv.controllers if facts.get(n.name) and facts[n.name].healthy), inv.controllers[0])
    results.extend(client_auth_results(inv, ctx.state, probe))
    return results
