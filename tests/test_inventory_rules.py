"""Issue 12's classes of bad inventories: each is one line naming file, line and field, with the fix.

Every case here was accepted, or ended in a traceback, before the rule it tests existed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hardway import build, inventory, jumpbox, plan
from hardway.inventory import InventoryError
from hardway.state import PkiState
from tests.test_inventory import GOOD, ROOT

WORKER = "worker-0"


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new)


def fails(text: str, source: str = "bad.yaml", base: Path | None = None) -> str:
    with pytest.raises(InventoryError) as err:
        inventory.parse(text, source, base=base)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"{source}:"), message
    return message


def ok(text: str, base: Path | None = None) -> inventory.Inventory:
    return inventory.parse(text, "good.yaml", base=base)


TWO_CONTROLLERS = GOOD + "  - {name: controller-1, address: 10.240.0.11, roles: [controller]}\n"
V6 = """\
cluster: {name: demo, service_cidr: 'fd00:32::/112', cluster_cidr: 'fd00:200::/56'}
nodes:
  - {name: controller-0, address: 'fd00::10', roles: [controller]}
  - {name: worker-0, address: 'fd00::20', roles: [worker], pod_cidr: 'fd00:200::/64'}
"""

# (class, inventory text, expected start, expected part). Grouped as in the issue.
CASES = [
    # --- tracebacks ----------------------------------------------------------------------------------
    ("kubelet CN past 64 characters", edit("name: worker-0", "name: " + "w" * 53),
     "bad.yaml:9: nodes[1].name: 'wwww", "is too long for a worker: its kubelet certificate's CN system:node:<name> "
     "may hold 64 characters (X.509); use at most 52"),
    ("etcd CN past 64 characters", edit("name: controller-0", "name: " + "c" * 30 + "." + "c" * 34),
     "bad.yaml:6: nodes[0].name: ", "is too long: a controller's name is its etcd certificate's CN"),
    ("file name too long", edit("name: worker-0", "name: " + ".".join(["w" * 60] * 4)),
     "bad.yaml:9: nodes[1].name: ", "(243 characters) is too long for a worker"),
    ("nested [ hits the recursion limit", "cluster: " + "[" * 400 + "]" * 400 + "\n",
     "bad.yaml:1: YAML syntax error: nested deeper than 32 levels", "close the brackets"),
    ("nested { hits the recursion limit", "cluster:\n  x: " + "{a: " * 400 + "1" + "}" * 400 + "\n",
     "bad.yaml:2: YAML syntax error: nested deeper than 32 levels", ""),
    # --- YAML 1.1 number spellings --------------------------------------------------------------------
    ("octal port", GOOD + "api_endpoint: {port: 06443}\n",
     "bad.yaml:13: api_endpoint.port: '06443' is an octal number in YAML 1.1 (read as 3363); write the plain "
     "number 6443", ""),
    ("octal days", GOOD + "pki: {cert_validity_days: 0022, renew_within_days: 7}\n",
     "bad.yaml:13: pki.cert_validity_days: '0022' is an octal number in YAML 1.1 (read as 18); write the plain "
     "number 22", ""),
    ("sexagesimal", GOOD + "etcd: {heartbeat_ms: 1:30}\n",
     "bad.yaml:13: etcd.heartbeat_ms: '1:30' is a base-60 number in YAML 1.1 (read as 90)", ""),
    ("hexadecimal", GOOD + "ssh: {port: 0x16}\n",
     "bad.yaml:13: ssh.port: '0x16' is a hexadecimal number in YAML 1.1 (read as 22); write the plain number 22",
     ""),
    ("octal where a string is wanted", edit("name: demo", "name: 0022"),
     "bad.yaml:2: cluster.name: expected a string, got number '0022' (YAML 1.1 reads it as 18); quote it", ""),
    # --- addresses that can never work ----------------------------------------------------------------
    ("unspecified v4", edit("10.240.0.20", "0.0.0.0"), "bad.yaml:10: nodes[1].address: 0.0.0.0 is the unspecified",
     ""),
    ("unspecified v6", edit("10.240.0.20", "'::'"), "bad.yaml:10: nodes[1].address: :: is the unspecified", ""),
    ("broadcast", edit("10.240.0.20", "255.255.255.255"),
     "bad.yaml:10: nodes[1].address: 255.255.255.255 is the broadcast address", ""),
    ("multicast v4", edit("10.240.0.20", "224.0.0.5"), "bad.yaml:10: nodes[1].address: 224.0.0.5 is a multicast",
     ""),
    ("multicast v6", edit("10.240.0.20", "'ff02::1'"), "bad.yaml:10: nodes[1].address: ff02::1 is a multicast", ""),
    ("loopback in a multi-node cluster", edit("10.240.0.20", "127.0.0.2"),
     "bad.yaml:10: nodes[1].address: 127.0.0.2 is a loopback address, which other machines cannot reach", ""),
    ("IPv6 zone index", edit("10.240.0.20", "'fe80::1%eth0'"),
     "bad.yaml:10: nodes[1].address: fe80::1%eth0 has a zone index (%eth0)", ""),
    ("IPv6 link-local", edit("10.240.0.20", "'fe80::1'"), "bad.yaml:10: nodes[1].address: fe80::1 is IPv6 link-local",
     ""),
    ("another spelling: IPv4-mapped", edit("10.240.0.20", "'::ffff:10.240.0.10'"),
     "bad.yaml:10: nodes[1].address: '::ffff:10.240.0.10' is an IPv4 address written as IPv6; write it as "
     "10.240.0.10", ""),
    ("another spelling: IPv6", V6.replace("'fd00::20'", "'FD00:0:0::10'"),
     "bad.yaml:4: nodes[1].address: fd00::10 is already used by nodes[0] (written there as 'fd00::10')", ""),
    ("endpoint unspecified", GOOD + "api_endpoint: {address: 0.0.0.0}\n",
     "bad.yaml:13: api_endpoint.address: 0.0.0.0 is the unspecified address", ""),
    ("endpoint loopback", GOOD + "api_endpoint: {address: 127.0.0.1}\n",
     "bad.yaml:13: api_endpoint.address: 127.0.0.1 is a loopback address", ""),
    # --- extra SANs -----------------------------------------------------------------------------------
    ("SAN with three parts", GOOD + "pki: {extra_sans: {kube-apiserver: [10.0.0]}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: '10.0.0' looks like an IP address but is not one", ""),
    ("SAN out of range", GOOD + "pki: {extra_sans: {kube-apiserver: [999.1.1.1]}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: '999.1.1.1' looks like an IP address", ""),
    ("SAN a float", GOOD + "pki: {extra_sans: {etcd: [1.5]}}\n",
     "bad.yaml:13: pki.extra_sans.etcd[0]: '1.5' looks like an IP address", ""),
    ("SAN too long", GOOD + "pki: {extra_sans: {kubelet: [" + ".".join(["a" * 60] * 5) + "]}}\n",
     "bad.yaml:13: pki.extra_sans.kubelet[0]: ", "is longer than 253 characters"),
    ("SAN upper case", GOOD + "pki: {extra_sans: {kube-apiserver: [API.example.com]}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: 'API.example.com' is not an RFC 1123 DNS name: write it in "
     "lower case", ""),
    ("SAN empty label", GOOD + "pki: {extra_sans: {kube-apiserver: [api..example]}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: 'api..example' is not an RFC 1123 DNS name", ""),
    ("SAN wildcard inside", GOOD + "pki: {extra_sans: {kube-apiserver: ['a.*.example']}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: 'a.*.example' is not an RFC 1123 DNS name", ""),
    ("SAN unspecified", GOOD + "pki: {extra_sans: {kube-apiserver: [0.0.0.0]}}\n",
     "bad.yaml:13: pki.extra_sans.kube-apiserver[0]: 0.0.0.0 is the unspecified address", ""),
    ("node name that looks like an IP", edit("name: worker-0", "name: 10.1.2"),
     "bad.yaml:9: nodes[1].name: '10.1.2' looks like an IP address but is not one", ""),
    # --- an endpoint port no apiserver listens on -----------------------------------------------------
    ("port on the default endpoint", GOOD + "api_endpoint: {port: 8443}\n",
     "bad.yaml:13: api_endpoint.port: 8443 is not where an apiserver listens: the endpoint is controller-0's own "
     "address (api_endpoint.address defaults to it), and kube-apiserver serves on 6443 there", ""),
    ("port on a controller's address", GOOD + "api_endpoint: {address: 10.240.0.10, port: 443}\n",
     "bad.yaml:13: api_endpoint.port: 443 is not where an apiserver listens", "use port 6443"),
    ("endpoint on a worker", GOOD + "api_endpoint: {address: 10.240.0.20}\n",
     "bad.yaml:13: api_endpoint.address: 10.240.0.20 is worker-0's address, and only controllers run an apiserver",
     ""),
    # --- unknown keys under binaries and versions -----------------------------------------------------
    ("binaries typo", GOOD + "binaries: {etdc: {path: /usr/bin/etcd}}\n",
     "bad.yaml:13: binaries.etdc: unknown binary; did you mean etcd? expected one of: etcd, etcdctl,", ""),
    ("versions typo", GOOD + "versions: {kubernets: '1.32.3'}\n",
     "bad.yaml:13: versions.kubernets: unknown component; did you mean kubernetes?", ""),
    ("version not a version", GOOD + "versions: {etcd: latest}\n",
     "bad.yaml:13: versions.etcd: 'latest' is not a version such as '1.32.3'", ""),
    # --- validity -------------------------------------------------------------------------------------
    ("CA shorter than the renewal window", GOOD + "pki: {ca_validity_days: 20, cert_validity_days: 60}\n",
     "bad.yaml:13: pki.ca_validity_days: 20 is not longer than renew_within_days (30)", "use more than 30"),
    ("cert outliving its CA", GOOD + "pki: {ca_validity_days: 365, cert_validity_days: 400}\n",
     "bad.yaml:13: pki.cert_validity_days: 400 is longer than ca_validity_days (365)", "use at most 365"),
    # --- binaries -------------------------------------------------------------------------------------
    ("URL without a host", GOOD + f"binaries: {{etcd: {{url: 'https:///etcd', sha256: {'0' * 64}}}}}\n",
     "bad.yaml:13: binaries.etcd.url: 'https:///etcd' has no host; write it as https://HOST/PATH", ""),
    ("URL with a bad port", GOOD + f"binaries: {{etcd: {{url: 'https://h:99999/etcd', sha256: {'0' * 64}}}}}\n",
     "bad.yaml:13: binaries.etcd.url: 'https://h:99999/etcd' is not a valid URL", ""),
    ("URL with spaces", GOOD + f"binaries: {{etcd: {{url: 'https://h/e tcd', sha256: {'0' * 64}}}}}\n",
     "bad.yaml:13: binaries.etcd.url: 'https://h/e tcd' contains spaces or control characters", ""),
    ("directory as a binary", GOOD + "binaries: {etcd: {path: /usr/bin}}\n",
     "bad.yaml:13: binaries.etcd.path: '/usr/bin' is a directory; give the etcd binary file itself", ""),
    # --- ssh.user and etcd.data_dir -------------------------------------------------------------------
    ("user with a shell character", GOOD + "ssh: {user: 'admin;id', become: sudo}\n",
     "bad.yaml:13: ssh.user: 'admin;id' is not a user name", ""),
    ("user like an option", GOOD + "ssh: {user: '-oProxyCommand=x', become: sudo}\n",
     "bad.yaml:13: ssh.user: '-oProxyCommand=x' is not a user name", ""),
    ("user too long", GOOD + "ssh: {user: " + "u" * 32 + ", become: sudo}\n",
     "bad.yaml:13: ssh.user: 'uuuu", "at most 31 characters"),
    ("data dir /", GOOD + "etcd: {data_dir: /}\n", "bad.yaml:13: etcd.data_dir: / is a system directory", ""),
    ("data dir /etc", GOOD + "etcd: {data_dir: /etc}\n", "bad.yaml:13: etcd.data_dir: /etc is a system directory",
     ""),
    ("data dir under /usr", GOOD + "etcd: {data_dir: /usr/etcd}\n",
     "bad.yaml:13: etcd.data_dir: '/usr/etcd' is under /usr", ""),
    ("data dir under /run", GOOD + "etcd: {data_dir: /run/etcd}\n",
     "bad.yaml:13: etcd.data_dir: '/run/etcd' is under /run, which is emptied at every boot", ""),
    ("data dir with ..", GOOD + "etcd: {data_dir: /var/lib/etcd/../x}\n",
     "bad.yaml:13: etcd.data_dir: '/var/lib/etcd/../x' contains '.' or '..'; write the path it means: '/var/lib/x'",
     ""),
    ("data dir trailing /", GOOD + "etcd: {data_dir: /var/lib/etcd/}\n",
     "bad.yaml:13: etcd.data_dir: '/var/lib/etcd/' ends in '/'; write '/var/lib/etcd'", ""),
    ("data dir trailing junk", GOOD + "etcd: {data_dir: '/var/lib/etcd x'}\n",
     "bad.yaml:13: etcd.data_dir: '/var/lib/etcd x' has characters other than letters", ""),
    ("data dir //", GOOD + "etcd: {data_dir: //var/lib/etcd}\n",
     "bad.yaml:13: etcd.data_dir: '//var/lib/etcd' has an empty component ('//'); write '/var/lib/etcd'", ""),
    # --- ranges Kubernetes refuses --------------------------------------------------------------------
    ("service range too wide", edit("service_cidr: 10.32.0.0/24", "service_cidr: 100.0.0.0/8"),
     "bad.yaml:3: cluster.service_cidr: 100.0.0.0/8 is too large: kube-apiserver refuses a service range shorter "
     "than /12 for IPv4; use /12 or longer", ""),
    ("IPv6 service range too wide", V6.replace("fd00:32::/112", "fd00:32::/64"),
     "bad.yaml:1: cluster.service_cidr: fd00:32::/64 is too large", "shorter than /108 for IPv6; use /108"),
    ("controller in another family", V6.replace("'fd00::10'", "10.240.0.10"),
     "bad.yaml:3: nodes[0].address: 10.240.0.10 is IPv4 but cluster.service_cidr fd00:32::/112 is IPv6", ""),
    ("pod CIDR too small", edit("pod_cidr: 10.200.0.0/24", "pod_cidr: 10.200.0.0/26"),
     "bad.yaml:12: nodes[1].pod_cidr: 10.200.0.0/26 has room for 61 pods, the kubelet runs up to 110 (maxPods); "
     "use a /25 or larger", ""),
    ("IPv6 pod CIDR too small", V6.replace("fd00:200::/64", "fd00:200::/122"),
     "bad.yaml:4: nodes[1].pod_cidr: fd00:200::/122 has room for 61 pods", "use a /121 or larger"),
    ("IPv6 node mask too long for the allocator", V6.replace("fd00:200::/64", "fd00:200::/80"),
     "bad.yaml:4: nodes[1].pod_cidr: fd00:200::/80 is more than 16 bits longer than cluster.cluster_cidr", ""),
    # --- message quality ------------------------------------------------------------------------------
    ("a huge value is cut", edit("name: demo", "name: " + "x" * 100_000),
     "bad.yaml:2: cluster.name: 'xxxxxxxx", "(100000 characters) is longer than 63 characters"),
    ("a huge key is cut", GOOD + "? " + "y" * 100_000 + "\n: 1\n", "bad.yaml:13: yyyyyyyy", "…: unknown field"),
    ("another document", GOOD + "---\nb: 1\n",
     "bad.yaml:13: YAML syntax error: expected a single document in the stream, but found another document",
     "remove the '---' line"),
    ("control character", edit("name: demo", "name: de\x07mo"),
     "bad.yaml:2: character U+0007 is not allowed in YAML (a control character); remove it", ""),
    ("tab", edit("  name: demo", "\tname: demo"), "bad.yaml:2: YAML syntax error: ", "indent with spaces, not tabs"),
    ("half a character", GOOD + 'binaries: {etcd: {url: "https://h\\ud800/x", sha256: ' + "0" * 64 + "}}\n",
     "bad.yaml:13: binaries.etcd.url: 'https://h\\ud800/x' contains \\ud800, half of a character; remove it", ""),
    ("a key with escapes", GOOD + 'binaries: {"etcd\\n": {path: x}, "\\e[31m": 1}\n',
     "bad.yaml:13: binaries.'etcd\\n': unknown binary; did you mean etcd?", ""),
]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_each_class_is_one_line_with_field_and_fix(case: str) -> None:
    _, text, start, part = next(c for c in CASES if c[0] == case)
    message = fails(text)
    assert message.startswith(start), message
    assert part in message, message
    assert "<unicode string>" not in message and "Traceback" not in message


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    """The edge of each rule is fine: a 52-character worker, a 64-character controller, /12, /25, a
    load balancer on any port, loopback on a single node, a real file with its sha256."""
    ok(edit("name: worker-0", "name: " + "w" * 52))
    ok(edit("name: controller-0", "name: " + "c" * 30 + "." + "c" * 33))
    ok(edit("service_cidr: 10.32.0.0/24", "service_cidr: 10.32.0.0/12"))
    ok(edit("pod_cidr: 10.200.0.0/24", "pod_cidr: 10.200.0.0/25"))
    ok(V6)
    assert ok(GOOD + "api_endpoint: {address: 10.240.0.100, port: 443}\n").api_endpoint.port == 443
    single = "cluster: {name: one, service_cidr: 10.32.0.0/24, cluster_cidr: 10.200.0.0/16}\n" \
             "nodes: [{name: solo, address: 127.0.0.1, roles: [controller, worker], pod_cidr: 10.200.0.0/24}]\n"
    assert str(ok(single).api_endpoint.address) == "127.0.0.1"
    ok(GOOD + "etcd: {data_dir: /srv/etcd-data}\nssh: {user: ec2-user, become: sudo}\n")
    ok(GOOD + "pki: {extra_sans: {kube-apiserver: ['*.api.example', 10.9.9.9, 'fd00::9']}}\n")
    ok(GOOD + "pki: {ca_validity_days: 365, cert_validity_days: 365}\n")


def test_the_allowed_binaries_are_the_ones_the_chapters_install() -> None:
    from hardway.chapters import distributed_binaries

    assert distributed_binaries() == inventory.BINARY_NAMES


def test_the_endpoint_port_rule_uses_the_port_the_apiserver_listens_on() -> None:
    from hardway import paths

    assert inventory.APISERVER_PORT == paths.APISERVER_PORT


def test_a_binary_not_matching_its_sha256_stops_render_naming_the_line(tmp_path: Path) -> None:
    binary = tmp_path / "etcd"
    binary.write_bytes(b"not the etcd you pinned")
    wrong, right = hashlib.sha256(b"the etcd you pinned").hexdigest(), hashlib.sha256(binary.read_bytes()).hexdigest()
    text = GOOD + f"binaries:\n  etcd:\n    path: {binary}\n    sha256: {wrong}\n"
    state = PkiState(tmp_path / "pki")
    jumpbox.generate(ok(text), state)
    with pytest.raises(inventory.HardwayError) as err:
        plan.node_files(ok(text), "controller-0", state)
    assert str(err.value) == (f"good.yaml:16: binaries.etcd.sha256: {binary} has sha256 {right[:16]}…, not "
                              f"{wrong[:16]}…; replace the file or correct the sha256")
    out = tmp_path / "build"
    with pytest.raises(inventory.HardwayError, match=r"binaries\.etcd\.sha256"):
        build.write_build(ok(text), state, out)
    assert not (out / "controller-0").exists()
    files = plan.node_files(ok(text.replace(wrong, right)), "controller-0", state)  # the fix: the right sha256
    assert any(f.path == "/usr/local/bin/etcd" and f.sha256 == right for f in files)


def test_a_file_with_an_undecodable_byte_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(GOOD.replace("name: demo", "name: d\xe9mo").encode("latin-1"))
    with pytest.raises(InventoryError) as err:
        inventory.load(path)
    assert str(err.value) == f"{path}:2: byte 0xe9 is not UTF-8 text; save the file as UTF-8"


def test_bad_inventory_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "api_endpoint: {port: 06443}\n")
    pki_dir = tmp_path / "pki"
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "pki", "--inventory", str(path),
                           "--pki-dir", str(pki_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {path}:13: api_endpoint.port: '06443' is an octal number in YAML 1.1 "
                                   "(read as 3363); write the plain number 6443")
    assert not pki_dir.exists()
    path.write_text(GOOD + "api_endpoint: {port: 6443}\n")  # the fix, as printed, works
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "pki", "--inventory", str(path),
                           "--pki-dir", str(pki_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_reference_page_names_every_field_binary_and_component() -> None:
    import re

    doc = (ROOT / "docs" / "inventory.md").read_text()
    source = (ROOT / "hardway" / "inventory.py").read_text()
    fields = {k for group in re.findall(r"mapping\(\(([^)]*)\)", source) for k in re.findall(r'"([a-z_]+)"', group)}
    assert {"name", "service_cidr", "pod_cidr", "hostname", "renew_within_days", "data_dir"} <= fields
    missing = [f for f in sorted(fields) if not re.search(rf"`[a-z_.\[\]]*\b{f}`", doc)]
    missing += [n for n in (*inventory.BINARY_NAMES, *inventory.VERSION_COMPONENTS) if f"`{n}`" not in doc]
    assert not missing, f"docs/inventory.md does not name: {missing}"
    assert "[docs/inventory.md](docs/inventory.md)" in (ROOT / "README.md").read_text()


# --- the loadbalancer role -------------------------------------------------------------------------

LB = GOOD + "  - {name: lb-0, address: 10.240.0.5, roles: [loadbalancer]}\n"


def test_a_load_balancer_node_is_the_endpoint_by_default_on_any_port() -> None:
    inv = ok(LB)
    assert [n.name for n in inv.loadbalancers] == ["lb-0"] and inv.loadbalancers[0].is_loadbalancer
    assert str(inv.api_endpoint.address) == "10.240.0.5" and inv.api_endpoint.port == 6443
    assert ok(LB + "api_endpoint: {port: 443}\n").api_endpoint.port == 443
    vip = ok(LB + "api_endpoint: {address: 10.240.0.100}\n")  # a VIP on the load balancer: the user's
    assert str(vip.api_endpoint.address) == "10.240.0.100"
    assert ok(LB.replace("roles: [loadbalancer]", "roles: [loadbalancer, worker], pod_cidr: 10.200.9.0/24"))


LB_CASES = [
    ("controller and loadbalancer", LB.replace("roles: [loadbalancer]", "roles: [loadbalancer, controller]"),
     "bad.yaml:13: nodes[2].roles: a node cannot be both controller and loadbalancer", "a machine of its own"),
    ("two load balancers, no address", LB + "  - {name: lb-1, address: 10.240.0.6, roles: [loadbalancer]}\n",
     "bad.yaml:1: api_endpoint.address: is required with 2 load balancers (lb-0, lb-1)", "keepalived"),
    ("endpoint on a controller beside a load balancer", LB + "api_endpoint: {address: 10.240.0.10}\n",
     "bad.yaml:14: api_endpoint.address: 10.240.0.10 is controller-0's own address, but lb-0 is the load "
     "balancer", "use its address (10.240.0.5)"),
    ("unknown role names the new one", edit("roles: [controller]", "roles: [lb]"),
     "bad.yaml:8: nodes[0].roles[0]: 'lb' is not a role; use controller, worker and/or loadbalancer", ""),
]


@pytest.mark.parametrize("case", [c[0] for c in LB_CASES])
def test_load_balancer_mistakes_are_one_line(case: str) -> None:
    _, text, start, part = next(c for c in LB_CASES if c[0] == case)
    message = fails(text)
    assert message.startswith(start), message
    assert part in message, message
