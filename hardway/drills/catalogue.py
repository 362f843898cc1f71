"""The drills: one small definition each. What it breaks, on which node, what `invoke verify` must
say (the check, words of its cause, the fix as its hint prints it), how the lab injects it and how
``--undo`` puts the lab back.

A drill's ``cause`` and ``fix`` are templates over the target node's fields (``fields``); the drill
tests assert that verify's detail holds the cause and its hint the fix, word for word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hardway.chapters.base import Chapter
from hardway.chapters.control_plane import CHAPTER as CONTROL_PLANE
from hardway.chapters.control_plane.files import APISERVER, CA, ETCD_CA
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import KEY as ETCD_KEY
from hardway.chapters.etcd.files import UNIT_PATH as ETCD_UNIT
from hardway.chapters.pod_routes import CHAPTER as POD_ROUTES
from hardway.chapters.pod_routes import PROTO
from hardway.chapters.workers import CHAPTER as WORKERS
from hardway.chapters.workers import files as wf
from hardway.chapters.workers.node import BRIDGE_NF, RESOLV_CONF, RESOLVED_UPSTREAM
from hardway.deploy import install
from hardway.drills import inject
from hardway.drills.inject import Env, stash, stash_dir, unstash
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node

SLOW_WRITE_IOPS = 10  # the slow-disk drill's limit: fdatasync ~0.5 s here, where the host's disk takes 0.3 ms


@dataclass(frozen=True)
class Drill:
    name: str
    chapter: str  # the chapter that must be up (and whose verify names the cause)
    breaks: str  # what it breaks, for people
    check: str  # verify's check that names it
    cause: str  # words of that check's detail (template over ``fields``)
    fix: str  # the fix as verify's hint prints it (template)
    how: str  # how the lab injects it
    target: Callable[[Inventory], Node]
    inject: Callable[[Env, Node], str]  # does it; returns what it did (one line)
    undo: Callable[[Env, Node], str]  # puts the lab back; returns what it did
    also: tuple[str, ...] = ()  # checks that fail as consequences of the same cause (the drill tests allow them)
    runnable: bool = True  # the fix is an `invoke` command the lab can run (else the undo stands in for it)

    def fields(self, inv: Inventory) -> dict[str, str]:
        node = self.target(inv)
        other = next((w for w in inv.workers if w.name != node.name), None)
        return {"node": node.name, "address": str(node.address), "data_dir": inv.etcd.data_dir,
                "endpoint": str(inv.api_endpoint.address), "peer": other.name if other else "",
                "peer_cidr": str(other.pod_cidr) if other else "", "peer_address": str(other.address) if other else ""}

    def says(self, inv: Inventory | None = None) -> tuple[str, str]:
        """(cause, fix) as verify words them for this inventory (without one: placeholders)."""
        f = self.fields(inv) if inv is not None else GENERIC
        return self.cause.format(**f), self.fix.format(**f)


GENERIC = {"node": "NODE", "address": "NODE-IP", "data_dir": "/var/lib/etcd", "endpoint": "ENDPOINT", "peer": "PEER",
           "peer_cidr": "PEER-POD-CIDR", "peer_address": "PEER-IP"}


def last_controller(inv: Inventory) -> Node:
    return inv.controllers[-1]


def first_controller(inv: Inventory) -> Node:
    return inv.controllers[0]


def first_worker(inv: Inventory) -> Node:
    if not inv.workers:
        raise HardwayError("this drill needs a worker; the lab has none (`invoke lab.up --workers 2`)")
    return inv.workers[0]


def last_worker(inv: Inventory) -> Node:
    first_worker(inv)  # the same one line when there is none
    return inv.workers[-1]


def _apply(chapter, *, fix: bool = False) -> Callable[[Env, Node], str]:
    def undo(env: Env, node: Node) -> str:
        return chapter.apply(env.ctx(fix=fix)).summary()

    return undo


# --- etcd -------------------------------------------------------------------------------------


def break_continuation(env: Env, node: Node) -> str:
    # the backslashes at the end of the --peer-trusted-ca-file and --client-cert-auth lines deleted: systemd
    # ends ExecStart after --peer-trusted-ca-file and meets a lone `--client-cert-auth` line ("Missing '='")
    env.sh(node, f"sed -i -e 's|^\\(  --peer-trusted-ca-file=.*\\) \\\\$|\\1|' "
                 f"-e 's|^\\(  --client-cert-auth\\) \\\\$|\\1|' {ETCD_UNIT} && grep -qx '  --client-cert-auth' "
                 f"{ETCD_UNIT} && systemctl daemon-reload")
    return f"{node.name}: two line continuations in {ETCD_UNIT} deleted by hand, systemd reloaded (etcd keeps " \
           "running on its old command line until its next restart)"


def remove_key(env: Env, node: Node) -> str:
    env.sh(node, f"{stash('missing-key', ETCD_KEY)} && systemctl restart --no-block etcd")
    return f"{node.name}: {ETCD_KEY} moved to {stash_dir('missing-key')}, etcd restarted (it cannot start)"


def reapplied(env: Env, node: Node, chapter: Chapter, drill: str) -> str:
    """Undo by the chapter's own apply (it puts its deployed files back), then drop the drill's stash."""
    done = chapter.apply(env.ctx()).summary()
    env.sh(node, inject.drop_stash(drill))
    return done


def undo_key(env: Env, node: Node) -> str:
    return reapplied(env, node, ETCD, "missing-key")  # bootstrap-etcd pushed the key again: the copy goes


def stale(env: Env, node: Node) -> str:
    inject.make_stale(env, node, "stale-data-dir")
    return (f"{node.name}: its data dir now holds a member of an older cluster (same peer URLs, another cluster "
            f"token), its own member dir moved to {stash_dir('stale-data-dir')}, etcd started on it")


def unstale(env: Env, node: Node) -> str:
    from hardway.chapters.etcd import datadir
    from hardway.chapters.etcd.cluster import gather_view
    from hardway.day2.replace import plan

    ctx = env.ctx()
    view = gather_view(env.inv, ctx.connector)
    verdict = view.verdicts().get(node.name)
    if verdict is None or verdict.kind not in (datadir.STALE, datadir.UNREADABLE):
        return f"{node.name}: nothing to undo: {verdict.detail if verdict else 'its data dir was not read'}"
    r = plan(ctx, node.name, view)
    r.seconds = r.procedure.run()
    return f"etcd.replace {node.name}: done in {r.seconds:.1f}s (the stale data is at {r.aside})"


def stop_member(env: Env, node: Node) -> str:
    env.sh(node, "systemctl stop etcd")
    return f"{node.name}: etcd stopped"


def slow_disk(env: Env, node: Node) -> str:
    from hardway.lab import diskio

    lab = _lab(env)
    how = diskio.throttle(lab.layout, node.name, SLOW_WRITE_IOPS)
    return f"{node.name}: writes limited to {SLOW_WRITE_IOPS} IOPS ({how})"


def fast_disk(env: Env, node: Node) -> str:
    from hardway.lab import diskio

    lab = _lab(env)
    return f"{node.name}: " + ("write limit removed" if diskio.unthrottle(lab.layout, node.name) else
                               "no write limit was set")


def _lab(env: Env):  # -> hardway.lab.Lab
    if env.lab is None:
        raise HardwayError("the slow-disk drill slows a lab node from the host: it needs the lab (`--name`), not "
                           "only an inventory")
    return env.lab


# --- control plane ------------------------------------------------------------------------------


def apiserver_without_endpoint(env: Env, node: Node) -> str:
    inv, state = env.inv, env.state
    endpoint = inv.api_endpoint.address
    cert = inject.leaf_without(state, inv, APISERVER, lambda kind, v: kind == "IP" and inject.same_ip(v, endpoint))
    inject.write_state_cert(state, APISERVER, cert)
    ctx = env.ctx()
    for c in inv.controllers:
        planned = [f for f in ctx.files(CONTROL_PLANE, c) if f.path.endswith(f"/{APISERVER}.crt")]
        r = ctx.connector(inv, c)
        try:
            install(r, planned)
        finally:
            r.close()
        CONTROL_PLANE.restart(ctx, c, APISERVER)
    return (f"the apiserver certificate reissued without the load balancer's address {endpoint} (as if issued "
            f"before the endpoint moved there), pushed to every controller, apiservers restarted one at a time")


def undo_apiserver(env: Env, node: Node) -> str:
    from hardway import rotate

    report = rotate.rotate(env.inv, env.state, progress=env.progress)
    return f"rotate-certs: restarted {', '.join(f'{u} on {n}' for u, n in report.restarted) or 'nothing'}"


def wrong_etcd_ca(env: Env, node: Node) -> str:
    env.sh(node, f"{stash('wrong-etcd-ca', ETCD_CA)} && cp {CA} {ETCD_CA} && "
                 f"systemctl restart --no-block {APISERVER}")
    return f"{node.name}: {ETCD_CA} replaced by the cluster CA ({CA}), the apiserver restarted"


def undo_etcd_ca(env: Env, node: Node) -> str:
    return reapplied(env, node, CONTROL_PLANE, "wrong-etcd-ca")


# --- workers and pod routes ---------------------------------------------------------------------


def stub_resolver(env: Env, node: Node) -> str:
    have = env.sh(node, f"[ -e {RESOLVED_UPSTREAM} ] && echo yes; true").strip()
    if have:
        raise HardwayError(f"{node.name} already has {RESOLVED_UPSTREAM} (systemd-resolved): this drill plays its "
                           "arrival and would not know what to put back")
    env.sh(node, f"mkdir -p -m 0700 {stash_dir('stub-resolver')} && cp -a {RESOLV_CONF} {stash_dir('stub-resolver')}/ "
                 f"&& mkdir -p /run/systemd/resolve && cp {RESOLV_CONF} {RESOLVED_UPSTREAM} && "
                 f"printf 'nameserver 127.0.0.53\\noptions edns0 trust-ad\\n' > {RESOLV_CONF}")
    return (f"{node.name}: systemd-resolved's way: {RESOLV_CONF} now names the stub 127.0.0.53, the real servers "
            f"are in {RESOLVED_UPSTREAM}")


def undo_stub_resolver(env: Env, node: Node) -> str:
    env.sh(node, f"if [ -e {stash_dir('stub-resolver')}/resolv.conf ]; then rm -f {RESOLVED_UPSTREAM}; "
                 "rmdir /run/systemd/resolve 2>/dev/null; true; fi; " + unstash('stub-resolver', RESOLV_CONF))
    return WORKERS.apply(env.ctx()).summary()


def drop_route(env: Env, node: Node) -> str:
    other = next((w for w in env.inv.workers if w.name != node.name), None)
    if other is None:
        raise HardwayError("this drill needs two workers: a route to another worker's pods is what it drops")
    env.sh(node, f"ip route del {other.pod_cidr} proto {PROTO}")
    return f"{node.name}: route to {other.name}'s pods ({other.pod_cidr} via {other.address}) deleted"


def kubelet_without_ip(env: Env, node: Node) -> str:
    cert = inject.leaf_without(env.state, env.inv, f"kubelet-{node.name}",
                               lambda kind, v: kind == "IP" and inject.same_ip(v, node.address))
    r = env.ctx().connector(env.inv, node)
    try:  # as a hand-made certificate would land: over the deployed one, the kubelet restarted
        r.run(f"mkdir -p -m 0700 {stash_dir('kubelet-cert-without-ip')} && cp -a {wf.KUBELET_CERT} "
              f"{stash_dir('kubelet-cert-without-ip')}/")
        install(r, [File(wf.KUBELET_CERT, 0o644, cert, chapter=WORKERS.name)], then=[f"systemctl restart {wf.KUBELET}"])
    finally:
        r.close()
    return f"{node.name}: kubelet certificate reissued without {node.address} (DNS name only), kubelet restarted"


def undo_kubelet(env: Env, node: Node) -> str:
    return reapplied(env, node, WORKERS, "kubelet-cert-without-ip")


def bridge_nf_off(env: Env, node: Node) -> str:
    env.sh(node, f"sysctl -qw {BRIDGE_NF}=0")
    return f"{node.name}: {BRIDGE_NF} = 0"


DRILLS: tuple[Drill, ...] = (
    Drill("broken-continuation", ETCD.name, "etcd's unit: two line continuations deleted by a hand edit",
          "unit-lint", "Missing '='", "`invoke bootstrap-etcd`",
          f"sed deletes the backslashes ending the --peer-trusted-ca-file and --client-cert-auth lines of {ETCD_UNIT}, "
          "then `systemctl daemon-reload`", last_controller, break_continuation, _apply(ETCD),
          also=("unit-matches-render", "files")),
    Drill("missing-key", ETCD.name, "a member's private key file is gone; etcd restarted without it",
          "files", f"{ETCD_KEY} is missing", "run `invoke bootstrap-etcd` to push it",
          f"mv {ETCD_KEY} to the node's drill stash, `systemctl restart etcd`", last_controller, remove_key, undo_key,
          also=("unit-active", "journal")),
    Drill("stale-data-dir", ETCD.name, "a member re-added with the data dir of an older cluster "
          "(`request cluster ID mismatch` in its peers' journals)",
          "data-dir", "not of this cluster", "`invoke etcd.replace {node}`",
          "a snapshot of the cluster restored on the node with another cluster token, its member dir put in place "
          "of the member's own, etcd started", last_controller, stale, unstale,
          also=("unit-active", "endpoint-health", "journal")),
    Drill("member-stopped", ETCD.name, "one etcd member stopped", "unit-active", "etcd is inactive (stopped)",
          "`invoke bootstrap-etcd`", "`systemctl stop etcd`", last_controller, stop_member, _apply(ETCD)),
    Drill("slow-disk", ETCD.name, "a disk too slow for etcd on one member",
          "disk-fsync", "slower than etcd's heartbeat", "move {data_dir} to a faster disk (an SSD)",
          f"the host limits the node's writes to {SLOW_WRITE_IOPS} IOPS with its cgroup's block-I/O throttle "
          "(cgroup v1 blkio.throttle.write_iops_device, or cgroup2 io.max wiops): fdatasync takes ~0.5 s",
          last_controller, slow_disk, fast_disk, runnable=False),
    Drill("apiserver-cert-without-lb", CONTROL_PLANE.name, "the apiserver certificate lacks the load balancer's "
          "(new) address", "served-cert", "(the API endpoint)", "`invoke rotate-certs`",
          "the PKI's kube-apiserver certificate reissued without the endpoint's IP, pushed, apiservers restarted",
          first_controller, apiserver_without_endpoint, undo_apiserver,
          also=("certificate", "readyz", "apiserver")),  # pki's drift, the endpoint's TLS, kubectl (smoke)
    Drill("wrong-etcd-ca", CONTROL_PLANE.name, "the apiserver's etcd CA file is the cluster CA, not etcd's",
          "etcd-client", "is not etcd's CA", "`invoke bootstrap-control-plane`",
          f"`cp {CA} {ETCD_CA}`, `systemctl restart kube-apiserver`", first_controller, wrong_etcd_ca, undo_etcd_ca,
          also=("files", "unit-active", "journal", "backends", "served-cert", "readyz", "rbac")),
    Drill("stub-resolver", WORKERS.name, "the kubelet hands pods a stub resolver (127.0.0.53): the CoreDNS loop",
          "resolv-conf", "lists 127.0.0.53", "re-run `invoke bootstrap-workers`",
          f"{RESOLV_CONF} rewritten to name 127.0.0.53, the real servers copied to {RESOLVED_UPSTREAM} (as "
          "systemd-resolved does)", first_worker, stub_resolver, undo_stub_resolver,
          also=("files",)),  # the kubelet config hardway plans now names the upstream list
    Drill("missing-pod-route", POD_ROUTES.name, "a worker lost its route to another worker's pods",
          "routes", "no route to {peer_cidr}", "run `invoke pod-routes`",
          "`ip route del <the other worker's pod_cidr> proto 211`", first_worker, drop_route, _apply(POD_ROUTES),
          also=("ping",)),
    Drill("kubelet-cert-without-ip", WORKERS.name, "a kubelet serving certificate without its node IP",
          "apiserver-to-kubelet", "does not carry {address}",
          "run `invoke pki` (kubelet certificates carry the node IP) and re-run `invoke bootstrap-workers`",
          "a kubelet certificate from the cluster CA with the node's name but not its IP, installed, kubelet "
          "restarted", first_worker, kubelet_without_ip, undo_kubelet, also=("files",)),
    Drill("br-netfilter-off", WORKERS.name, f"{BRIDGE_NF} off on a worker",
          f"sysctl {BRIDGE_NF}", f"{BRIDGE_NF} = 0", "run `invoke bootstrap-workers --fix`",
          f"`sysctl -w {BRIDGE_NF}=0`", last_worker, bridge_nf_off, _apply(WORKERS, fix=True), also=("journal",)),
)


def by_name(name: str) -> Drill:
    for d in DRILLS:
        if d.name == name:
            return d
    raise HardwayError(f"no drill named {name!r}; drills: {', '.join(d.name for d in DRILLS)} "
                       "(`invoke lab.break --list`)")
