"""Inventory: valid files load into typed objects; every bad one is one clear line, never a traceback."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hardway import inventory
from hardway.inventory import InventoryError

ROOT = Path(__file__).resolve().parent.parent

GOOD = textwrap.dedent(
    """\
    cluster:
      name: demo
      service_cidr: 10.32.0.0/24
      cluster_cidr: 10.200.0.0/16
    nodes:
      - name: controller-0
        address: 10.240.0.10
        roles: [controller]
      - name: worker-0
        address: 10.240.0.20
        roles: [worker]
        pod_cidr: 10.200.0.0/24
    """
)


def test_sample_inventory_loads() -> None:
    inv = inventory.load(ROOT / "inventory" / "sample.yaml")
    assert [n.name for n in inv.controllers] == ["controller-0", "controller-1", "controller-2"]
    assert [n.name for n in inv.workers] == ["worker-0", "worker-1"]
    assert inv.service_ip == ipaddress.ip_address("10.32.0.1")
    assert inv.cluster_dns_ip == ipaddress.ip_address("10.32.0.10")
    assert inv.api_endpoint.url == "https://10.240.0.100:6443"
    assert inv.key_algorithm == "ecdsa-p256"
    assert inv.warnings == ()


def test_defaults_and_api_endpoint_falls_back_to_first_controller() -> None:
    inv = inventory.parse(GOOD, "good.yaml", base=Path("/srv/inv"))
    assert inv.api_endpoint.address == ipaddress.ip_address("10.240.0.10")
    assert inv.api_endpoint.port == 6443
    assert inv.cluster_domain == "cluster.local"
    assert inv.ssh.user == "root" and inv.ssh.become == "root"
    assert inv.etcd.data_dir == "/var/lib/etcd"
    assert inv.encryption_provider == "secretbox" and not inv.encryption_provider_given
    assert inv.node("worker-0").pod_cidr == ipaddress.ip_network("10.200.0.0/24")


def test_objects_are_frozen() -> None:
    inv = inventory.parse(GOOD, "good.yaml")
    with pytest.raises(AttributeError):
        inv.cluster_name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        inv.binaries["etcd"] = None  # type: ignore[index]


def test_relative_paths_resolve_against_the_inventory_folder() -> None:
    text = GOOD + "ssh: {key: keys/id, known_hosts: /etc/kh}\nbinaries: {etcd: {path: bin/etcd}}\n"
    inv = inventory.parse(text, "x.yaml", base=Path("/srv/inv"))
    assert inv.ssh.key == Path("/srv/inv/keys/id")
    assert inv.ssh.known_hosts == Path("/etc/kh")
    assert inv.binaries["etcd"].path == Path("/srv/inv/bin/etcd")


def test_even_number_of_controllers_is_warned_about() -> None:
    text = GOOD.replace(
        "  - name: worker-0", "  - name: controller-1\n    address: 10.240.0.11\n    roles: [controller]\n"
        "  - name: worker-0"
    )
    inv = inventory.parse(text, "x.yaml")
    assert len(inv.controllers) == 2
    assert len(inv.warnings) == 1 and "even number" in inv.warnings[0]


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (inventory text, expected message). Each is a distinct mistake users make.
BAD = {
    "bad ip": (_edit("10.240.0.20", "10.0.0.300"),
               "bad.yaml:10: nodes[1].address: '10.0.0.300' is not an IPv4 or IPv6 address"),
    "bad cidr": (_edit("10.32.0.0/24", "10.32.0.0/33"),
                 "bad.yaml:3: cluster.service_cidr: '10.32.0.0/33' is not a CIDR such as 10.32.0.0/24"),
    "host bits": (_edit("10.200.0.0/16", "10.200.0.1/16"),
                  "bad.yaml:4: cluster.cluster_cidr: '10.200.0.1/16' has host bits set; the network is "
                  "10.200.0.0/16"),
    "duplicate name": (_edit("name: worker-0", "name: controller-0"),
                       "bad.yaml:9: nodes[1].name: 'controller-0' is already used by nodes[0]; "
                       "node names must be unique"),
    "duplicate address": (_edit("10.240.0.20", "10.240.0.10"),
                          "bad.yaml:10: nodes[1].address: 10.240.0.10 is already used by nodes[0]; "
                          "addresses must be unique"),
    "not rfc1123": (_edit("name: worker-0", "name: Worker_0"),
                    "bad.yaml:9: nodes[1].name: 'Worker_0' is not an RFC 1123 DNS name"),
    "service/pod overlap": (_edit("10.200.0.0/16", "10.32.0.0/16"),
                            "bad.yaml:4: cluster.cluster_cidr: 10.32.0.0/16 overlaps service_cidr "
                            "10.32.0.0/24"),
    "node inside pod network": (_edit("10.240.0.20", "10.200.5.5"),
                                "bad.yaml:10: nodes[1].address: 10.200.5.5 lies inside "
                                "cluster.cluster_cidr 10.200.0.0/16"),
    "pod cidr outside cluster cidr": (_edit("pod_cidr: 10.200.0.0/24", "pod_cidr: 10.99.0.0/24"),
                                      "bad.yaml:12: nodes[1].pod_cidr: 10.99.0.0/24 is not inside "
                                      "cluster.cluster_cidr 10.200.0.0/16"),
    "no controller": (_edit("roles: [controller]", "roles: [worker]\n    pod_cidr: 10.200.1.0/24"),
                      "bad.yaml:6: nodes: has no controller"),
    "unknown role": (_edit("roles: [controller]", "roles: [master]"),
                     "bad.yaml:8: nodes[0].roles[0]: 'master' is not a role; use controller, worker and/or "
                     "loadbalancer"),
    "worker without pod cidr": (_edit("    pod_cidr: 10.200.0.0/24\n", ""),
                                "bad.yaml:9: nodes[1].pod_cidr: is required"),
    "audit log relative": (GOOD + "audit:\n  log_path: audit.log\n",
                           "bad.yaml:14: audit.log_path: 'audit.log' must be an absolute path on the controllers, "
                           "such as /var/log/kubernetes/audit.log"),
    "audit log a directory": (GOOD + "audit: {log_path: /var/log/kubernetes/}\n",
                              "bad.yaml:13: audit.log_path: '/var/log/kubernetes/' names a directory; name the "
                              "file, such as /var/log/kubernetes/audit.log"),
    "audit log under /tmp": (GOOD + "audit: {log_path: /tmp/audit.log}\n",
                             "bad.yaml:13: audit.log_path: '/tmp/audit.log' is under /tmp, no place for a growing "
                             "log; use /var/log/kubernetes/audit.log"),
    "audit max age quoted": (GOOD + "audit: {max_age_days: '30'}\n",
                             "bad.yaml:13: audit.max_age_days: expected a whole number from 1 to 3650, got string "
                             "'30'; write 30 (a plain number, no quotes)"),
    "audit max size zero": (GOOD + "audit: {max_size_mb: 0}\n",
                            "bad.yaml:13: audit.max_size_mb: 0 is out of range; use a number from 1 to 100000"),
    "audit unknown key": (GOOD + "audit: {max_backup: 3}\n",
                          "bad.yaml:13: audit.max_backup: unknown field; did you mean max_backups?"),
    "encryption provider": (GOOD + "encryption: {provider: aes}\n",
                            "bad.yaml:13: encryption.provider: 'aes' is not one of: secretbox, aesgcm, aescbc"),
    "unknown field": (_edit("address: 10.240.0.20", "adress: 10.240.0.20"),
                      "bad.yaml:10: nodes[1].adress: unknown field; did you mean address? expected one of: name, "
                      "address, roles, pod_cidr"),
    "yaml boolean": (_edit("name: demo", "name: on"),
                     "bad.yaml:2: cluster.name: expected a string, got boolean true (YAML reads it as a "
                     "boolean: quote it)"),
    "syntax error": (GOOD + "  - {name: x\n", "bad.yaml:14: YAML syntax error"),
    "bad key algorithm": (GOOD + "pki: {key_algorithm: ed25519}\n",
                          "bad.yaml:13: pki.key_algorithm: 'ed25519' is not one of: ecdsa-p256, rsa-2048, "
                          "rsa-3072, rsa-4096"),
    "port out of range": (GOOD + "api_endpoint: {port: 70000}\n",
                          "bad.yaml:13: api_endpoint.port: 70000 is out of range; use a number from 1 to 65535"),
    "url without sha256": (GOOD + "binaries: {etcd: {url: 'https://example.invalid/etcd'}}\n",
                           "bad.yaml:13: binaries.etcd: a url needs its sha256"),
    "path and url": (GOOD + "binaries: {etcd: {path: /bin/etcd, url: 'https://example.invalid/etcd'}}\n",
                     "bad.yaml:13: binaries.etcd: give exactly one of path (a local file) or url"),
    "become root with other user": (GOOD + "ssh: {user: admin, become: root}\n",
                                    "bad.yaml:13: ssh.become: 'root' needs user: root"),
    "pod cidr on a controller": (_edit("roles: [controller]", "roles: [controller]\n    pod_cidr: 10.200.9.0/24"),
                                 "bad.yaml:9: nodes[0].pod_cidr: only workers take a pod_cidr"),
    "overlapping pod cidrs": (GOOD + "  - {name: worker-1, address: 10.240.0.21, roles: [worker], "
                                     "pod_cidr: 10.200.0.128/25}\n",
                              "bad.yaml:13: nodes[2].pod_cidr: 10.200.0.128/25 overlaps worker-0's pod_cidr "
                              "10.200.0.0/24"),
    "list expected": (_edit("roles: [controller]", "roles: controller"),
                      "bad.yaml:8: nodes[0].roles: expected a list, got string 'controller'"),
    "duplicate key": (GOOD + "cluster: {name: again}\n",
                      "bad.yaml:13: cluster: given twice; keep one"),
    "empty file": ("", "bad.yaml:1: the inventory is empty"),
    "renew window too wide": (GOOD + "pki: {cert_validity_days: 30, renew_within_days: 30}\n",
                              "bad.yaml:13: pki.renew_within_days: 30 must be below cert_validity_days (30)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_gives_one_line(case: str) -> None:
    text, expected = BAD[case]
    with pytest.raises(InventoryError) as err:
        inventory.parse(text, "bad.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_at_least_fifteen_distinct_messages() -> None:
    assert len({expected for _, expected in BAD.values()}) >= 15


@pytest.mark.parametrize("case", ["bad ip", "no controller", "syntax error"])
def test_cli_reports_bad_inventory_in_one_line_with_exit_1(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD[case][0])
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "pki.check", "--inventory", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith(f"error: {path}:")


def test_missing_inventory_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="inventory not found; pass --inventory PATH"):
        inventory.load(tmp_path / "nope.yaml")


# --- Hypothesis: random YAML and random values never yield anything but InventoryError ----------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False, width=32),
    st.text(max_size=20), st.sampled_from(["10.0.0.1", "10.0.0.0/8", "fe80::1", "::/0", "on", "0600",
                                           "controller", "worker", "rsa-4096", "-", "a" * 70]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["name", "address", "roles", "pod_cidr", "port", "x"]), children,
                      max_size=4),
    max_leaves=12,
)


def _mutate(doc: dict, path: list, value: object) -> dict:
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return doc


FIELDS = [
    ["cluster", "name"], ["cluster", "service_cidr"], ["cluster", "cluster_cidr"], ["cluster", "domain"],
    ["nodes", 0, "name"], ["nodes", 0, "address"], ["nodes", 0, "roles"], ["nodes", 1, "pod_cidr"],
    ["nodes", 1, "roles"], ["nodes", 1], ["nodes"], ["cluster"], ["api_endpoint"], ["ssh"], ["pki"],
    ["binaries"], ["etcd"], ["versions"], ["encryption"],
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), values)
def test_random_values_never_traceback(path: list, value: object) -> None:
    doc = _mutate(yaml.safe_load(GOOD), path, value)
    text = yaml.safe_dump(doc)
    try:
        inventory.parse(text, "fuzz.yaml")
    except InventoryError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("fuzz.yaml")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}\n #&*!|>'\"%@`,?0123456789.")), max_size=80))
@example("!0")  # an unknown tag once escaped as a ConstructorError
@example("cluster: {name: !x 1}")
def test_random_yaml_text_never_tracebacks(text: str) -> None:
    try:
        inventory.parse(text, "fuzz.yaml")
    except InventoryError as exc:
        assert "\n" not in str(exc)
