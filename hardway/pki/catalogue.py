"""What every certificate of the cluster must be: FIELD-NOTES' table as data.

``catalogue(inv)`` lists them, CAs first, named as in hardway/state.py; ``spec_for`` finds one.
Which CA signs a certificate is data (``CertSpec.issuer``): the cluster CA signs every Kubernetes
identity; etcd has a CA of its own, so that no certificate a worker holds is accepted by etcd; the
aggregation layer's front proxy has one too (upstream: a client certificate of the cluster CA must not
be able to pose as the front proxy and assert any user in request headers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.state import etcd_cert_name, kubelet_cert_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_NAME = "ca"
ETCD_CA_NAME = "etcd-ca"
FRONT_PROXY_CA_NAME = "front-proxy-ca"
CA_NAMES = (CA_NAME, ETCD_CA_NAME, FRONT_PROXY_CA_NAME)
FRONT_PROXY_CLIENT = "front-proxy-client"
SERVICE_ACCOUNTS = "service-accounts"
APISERVER_ETCD_CLIENT = "apiserver-etcd-client"
LOADBALANCER = "kube-apiserver-lb"


@dataclass(frozen=True)
class CertSpec:
    """One certificate of the cluster: its file name (see hardway/state.py) and its content."""

    name: str
    common_name: str
    organization: str | None
    purpose: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()
    client: bool = False
    server: bool = False
    is_ca: bool = False
    issuer: str = CA_NAME  # the CA that signs it (a CA names itself: self-signed)

    @property
    def sans(self) -> tuple[tuple[str, str], ...]:
        """SANs as (kind, value) pairs, e.g. ("IP", "10.32.0.1")."""
        return tuple(("DNS", d) for d in self.dns_names) + tuple(("IP", str(i)) for i in self.ip_addresses)

    @property
    def eku(self) -> str:
        return eku_label(self.client, self.server)


def eku_label(client: bool, server: bool) -> str:
    return "+".join(p for p, on in (("client", client), ("server", server)) if on) or "none"


def _split_sans(entries: Iterable[str | IPAddress]) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """Split names and addresses, dropping duplicates but keeping the first order."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for entry in entries:
        try:
            ip = ipaddress.ip_address(str(entry))
        except ValueError:
            if str(entry) not in dns:
                dns.append(str(entry))
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(dns), tuple(ips)


def _leaf(name: str, cn: str, o: str | None, purpose: str, sans: Iterable[str | IPAddress] = (),
          client: bool = False, server: bool = False, issuer: str = CA_NAME) -> CertSpec:
    dns, ips = _split_sans(sans)
    return CertSpec(name=name, common_name=cn, organization=o, purpose=purpose, dns_names=dns,
                    ip_addresses=ips, client=client, server=server, issuer=issuer)


def catalogue(inv: Inventory) -> list[CertSpec]:
    """Every certificate the cluster needs, CAs first, named as in hardway/state.py."""
    loopback = ipaddress.ip_address("127.0.0.1")
    extra = inv.extra_sans
    specs = [CertSpec(name=CA_NAME, common_name=inv.cluster_name, organization=None, is_ca=True, issuer=CA_NAME,
                      purpose="signs every Kubernetes identity; the apiserver, kubelets and kubectl trust it"),
             # O names the cluster: a CN of "<cluster>-etcd" could pass X.509's 64 characters
             CertSpec(name=ETCD_CA_NAME, common_name="etcd-ca", organization=inv.cluster_name, is_ca=True,
                      issuer=ETCD_CA_NAME,
                      purpose="signs etcd's members and the apiserver's etcd client; etcd trusts only it"),
             CertSpec(name=FRONT_PROXY_CA_NAME, common_name="front-proxy-ca", organization=inv.cluster_name,
                      is_ca=True, issuer=FRONT_PROXY_CA_NAME,
                      purpose="signs the apiserver's front-proxy client: extension apiservers (metrics-server) "
                              "trust only it for the user named in request headers")]
    specs.append(_leaf("admin", "admin", "system:masters", client=True,
                       purpose="kubectl as cluster admin (group system:masters)"))
    for w in inv.workers:
        specs.append(_leaf(
            kubelet_cert_name(w), f"system:node:{w.name}", "system:nodes",
            sans=[w.name, w.address, loopback, *extra.get("kubelet", ())], client=True, server=True,
            purpose=f"kubelet on {w.name}: its identity to the apiserver (Node authorizer) and its "
                    "serving cert for the apiserver's logs/exec calls",
        ))
    specs.append(_leaf("kube-proxy", "system:kube-proxy", "system:node-proxier", client=True,
                       purpose="kube-proxy on every worker, talking to the apiserver"))
    for component in ("kube-controller-manager", "kube-scheduler"):
        specs.append(_leaf(component, f"system:{component}", f"system:{component}", client=True,
                           purpose=f"{component} on the controllers, talking to the apiserver"))
    api = inv.api_endpoint
    domain_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster", f"kubernetes.default.svc.{inv.cluster_domain}"]
    specs.append(_leaf(
        "kube-apiserver", "kubernetes", None, server=True,
        sans=[inv.service_ip, loopback, *(c.address for c in inv.controllers), api.address,
              *([api.hostname] if api.hostname else []), *domain_names,
              *extra.get("kube-apiserver", ())],
        purpose="the apiserver's serving cert: every address clients dial",
    ))
    specs.append(_leaf("apiserver-kubelet-client", "kubernetes", None, client=True,
                       purpose="the apiserver calling kubelets (logs, exec); RBAC user `kubernetes`"))
    if inv.loadbalancers:
        specs.append(_leaf(LOADBALANCER, "hardway:kube-apiserver-lb", None, client=True,
                           purpose="HAProxy's health checks of each apiserver's /readyz; bound to no role, so it "
                                   "reads only the health endpoints every authenticated user may"))
    specs.append(_leaf(APISERVER_ETCD_CLIENT, "kube-apiserver-etcd-client", None, client=True, issuer=ETCD_CA_NAME,
                       purpose="the apiserver's client cert to etcd (from the etcd CA: nothing else etcd accepts)"))
    specs.append(_leaf(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, None, client=True, issuer=FRONT_PROXY_CA_NAME,
                       purpose="the apiserver proxying to extension apiservers (aggregation layer: "
                               "kubectl top through metrics-server)"))
    for c in inv.controllers:
        specs.append(_leaf(
            etcd_cert_name(c), c.name, None, client=True, server=True, issuer=ETCD_CA_NAME,
            sans=[c.address, loopback, c.name, "localhost", *extra.get("etcd", ())],
            purpose=f"etcd member {c.name}: serving clients and peers, and dialing its peers",
        ))
    specs.append(_leaf(SERVICE_ACCOUNTS, "service-accounts", None, client=True,
                       purpose="its key pair signs (apiserver) and verifies service-account tokens; "
                               "service-accounts.pub is the public half"))
    return specs


def cas(specs: Iterable[CertSpec]) -> list[CertSpec]:
    """The CAs among ``specs``, in catalogue order."""
    return [s for s in specs if s.is_ca]


def spec_for(inv: Inventory, name: str) -> CertSpec:
    for spec in catalogue(inv):
        if spec.name == name:
            return spec
    raise HardwayError(f"no certificate named {name!r}; known: {', '.join(s.name for s in catalogue(inv))}")
