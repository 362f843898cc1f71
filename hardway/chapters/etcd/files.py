"""What the etcd chapter puts on each controller, and how its tools are called there."""

from __future__ import annotations

import shlex

from hardway.inventory import Inventory, Node
from hardway.paths import BIN, ETCD_DIR, unit_file
from hardway.pki.catalogue import ETCD_CA_NAME
from hardway.planner import Planner
from hardway.state import etcd_cert_name

UNIT = "etcd"
UNIT_PATH = unit_file(UNIT)
CA, CERT, KEY = f"{ETCD_DIR}/ca.crt", f"{ETCD_DIR}/etcd.crt", f"{ETCD_DIR}/etcd.key"
ETCDCTL = f"{BIN}/etcdctl"
BINARIES = ("etcd", "etcdctl")


def etcd_argv(inv: Inventory, node: Node) -> list[str]:
    """etcd's command line on controller ``node``: TLS for clients and peers, all members named."""
    peer_url, client_url = inv.etcd_peer_url(node), inv.etcd_client_url(node)
    initial_cluster = ",".join(f"{c.name}={inv.etcd_peer_url(c)}" for c in inv.controllers)
    return [
        f"{BIN}/etcd",
        f"--name={node.name}",
        f"--cert-file={CERT}",
        f"--key-file={KEY}",
        f"--peer-cert-file={CERT}",
        f"--peer-key-file={KEY}",
        f"--trusted-ca-file={CA}",
        f"--peer-trusted-ca-file={CA}",
        "--client-cert-auth",
        "--peer-client-cert-auth",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--listen-peer-urls={peer_url}",
        f"--listen-client-urls={client_url},https://127.0.0.1:2379",
        f"--advertise-client-urls={client_url}",
        f"--initial-cluster-token={inv.cluster_name}",
        f"--initial-cluster={initial_cluster}",
        "--initial-cluster-state=new",
        f"--data-dir={inv.etcd.data_dir}",
        f"--heartbeat-interval={inv.etcd.heartbeat_ms}",
        f"--election-timeout={inv.etcd.election_ms}",
        "--logger=zap",  # 3.4 defaults to the deprecated capnslog; 3.5 to zap
    ]


def plan_files(p: Planner) -> None:
    svc = (UNIT,)
    for name in BINARIES:
        p.binary(BIN, name, svc)
    p.binary(BIN, "etcdutl", ())  # only if the inventory has it: etcd 3.5+ restores snapshots with it
    member = etcd_cert_name(p.node)
    p.pki(CA, p.state.cert(ETCD_CA_NAME), svc)  # etcd's own CA: it trusts nothing the cluster CA signed
    p.pki(CERT, p.state.cert(member), svc)
    p.pki(KEY, p.state.key(member), svc, secret=True)
    p.unit(UNIT, etcd_argv(p.inv, p.node))


def ctl(inv: Inventory, node: Node, args: str, endpoints: str | None = None, *, timeout: str = "5s",
        dial: str = "3s") -> str:
    """An etcdctl command line run ON a controller with that member's own client certificate."""
    eps = endpoints or inv.etcd_client_url(node)
    return (f"ETCDCTL_API=3 {ETCDCTL} --endpoints={shlex.quote(eps)} --cacert={CA} --cert={CERT} "
            f"--key={KEY} --command-timeout={timeout} --dial-timeout={dial} {args}")
