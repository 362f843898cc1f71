"""Hypothesis strategies for the tests, in one place (attrs' layout).

``inventory_texts()`` writes whole inventories as YAML text, field by field. About a third are
valid (so PKI, kubeconfigs and render run often enough to be tested too); the others carry one or
two wrong fields, drawn from what users get wrong: YAML 1.1 spellings (``06443``, ``1:30``,
``on``), addresses no peer can use, names past X.509's limits, ranges Kubernetes refuses, SANs that
look like IPs, typos in keys. One in six is also damaged as text (a tab, a control character, a
second document, deep nesting, a cut-off file, a stray character). Values are written raw, as a
user types them, so YAML's own reading is part of what is tested.
"""

from __future__ import annotations

import hashlib
import json

from hypothesis import strategies as st

# The stand-in binary the property test writes next to the inventory (``binaries.*.path``).
BINARY_NAME = "etcd-bin"
BINARY_BYTES = b"#!/bin/sh\necho etcd stand-in\n"
BINARY_SHA256 = hashlib.sha256(BINARY_BYTES).hexdigest()

# Arbitrary text as a YAML double-quoted scalar (JSON's string syntax is YAML's), and YAML's surprises.
JUNK = st.text(max_size=12).map(json.dumps) | st.sampled_from(["on", "no", "~", "''", "[]", "{}", "0022", "1:30",
                                                               "-1", "!x 1", "&a 1"])
NAME_BAD = st.sampled_from(["Worker_0", "10.1.2", "-x", "x-", "a..b", "w" * 53, "c" * 65, "'" + "n" * 300 + "'",
                            ".".join(["w" * 60] * 4), "'node 1'"]) | JUNK
ADDRESS_BAD = st.sampled_from(["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "'fe80::1%eth0'",
                               "'fe80::1'", "'::ffff:10.240.0.10'", "10.0.0.300", "'::'", "'ff02::1'", "10.32.0.5",
                               "10.200.3.3", "'1:2:3:4:5:6:7:8'", "10.240.0.10", "'fd00::a'"]) | JUNK
PORT_GOOD = st.sampled_from(["6443", "443", "8443", "22"])
PORT_BAD = st.sampled_from(["06443", "0x1bb", "1:30", "70000", "0", "'6443'", "6_443"]) | JUNK
DAYS = st.sampled_from(["1", "7", "30", "60", "90", "365", "3650", "36500"])
DAYS_BAD = st.sampled_from(["0030", "1:00", "'30'", "-5", "0"]) | JUNK
SAN_GOOD = st.sampled_from(["api.example", "'*.api.example'", "10.9.9.9", "'fd00::99'", "127.0.0.1", "kubernetes.lab"])
SAN_BAD = st.sampled_from(["10.0.0", "999.1.1.1", "1.5", "API.example", "a..b", "'a.*.b'", "0.0.0.0",
                          "'" + ".".join(["a" * 60] * 5) + "'", "'fe80::1%eth0'"]) | JUNK

# Every field a fault can be put into (names as in the inventory, for the statistics).
FIELDS = ("cluster.name", "cluster.domain", "cluster.service_cidr", "cluster.cluster_cidr", "nodes.name",
          "nodes.address", "nodes.roles", "nodes.pod_cidr", "api_endpoint.address", "api_endpoint.port",
          "api_endpoint.hostname", "pki.key_algorithm", "pki.days", "pki.extra_sans", "encryption.provider",
          "ssh.user", "ssh.port", "ssh.become", "etcd.data_dir", "etcd.timing", "binaries", "versions")


class _Faults:
    """Which fields of one drawn inventory get a wrong value: none for about a third, else one or two."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.chosen = draw(st.one_of(st.just(frozenset()), st.sets(st.sampled_from(FIELDS), min_size=1, max_size=2)))

    def pick(self, name: str, good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
        assert name in FIELDS, name
        return self.draw(bad if name in self.chosen else good)


def _mapping(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


def _some(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> str:
    """A flow mapping of some of ``pairs``."""
    return _mapping([p for p in pairs if draw(st.booleans())])


def _binaries(f: _Faults) -> str:
    good_entry = st.one_of(st.just(_mapping([("path", BINARY_NAME), ("sha256", BINARY_SHA256)])),
                           st.just(_mapping([("path", BINARY_NAME)])),
                           st.just(_mapping([("url", "https://example.invalid/etcd"), ("sha256", "0" * 64)])))
    bad_entry = st.one_of(
        st.sampled_from([_mapping([("path", BINARY_NAME), ("sha256", "0" * 64)]),  # not the file's sha256
                         _mapping([("path", BINARY_NAME), ("sha256", "abc")]), _mapping([("path", ".")]),
                         _mapping([("path", BINARY_NAME), ("url", "https://h/x")])]),
        st.sampled_from(["'https:///etcd'", "'https://h:99999/x'", "'ftp://h/etcd'", "'https://h/e tcd'",
                         "https://h/etcd"]).map(lambda u: _mapping([("url", u), ("sha256", "0" * 64)])),
        JUNK)
    good = st.dictionaries(st.sampled_from(["etcd", "etcdctl", "kubelet"]), good_entry, max_size=2)
    bad = st.one_of(st.dictionaries(st.sampled_from(["etcd", "etcdctl", "kubelet"]), bad_entry, min_size=1, max_size=2),
                    st.dictionaries(st.sampled_from(["etdc", "kube_proxy", "docker"]), good_entry, min_size=1,
                                    max_size=1))
    return f.pick("binaries", good.map(lambda d: _mapping(list(d.items()))),
                  bad.map(lambda d: _mapping(list(d.items()))))


def _versions(f: _Faults) -> str:
    good = st.dictionaries(st.sampled_from(["containerd", "kubernetes", "etcd"]),
                           st.sampled_from(["'1.7.0'", "'2.1.0'", "'v1.32.3'"]), max_size=2)
    bad = st.one_of(st.dictionaries(st.sampled_from(["kubernets", "cni-plugins"]), st.just("'1.0.0'"), min_size=1,
                                    max_size=1),
                    st.dictionaries(st.sampled_from(["containerd", "etcd"]),
                                    st.sampled_from(["1.7", "latest", "3.10", "'1.x'"]) | JUNK, min_size=1,
                                    max_size=1))
    return f.pick("versions", good.map(lambda d: _mapping(list(d.items()))),
                  bad.map(lambda d: _mapping(list(d.items()))))


def _api_endpoint(draw: st.DrawFn, f: _Faults, lb: str) -> str:
    """A load balancer may listen on any port; without one the endpoint is a controller's own 6443."""
    fields = []
    if draw(st.booleans()) or "api_endpoint.address" in f.chosen:
        fields.append(("address", f.pick("api_endpoint.address", st.just(lb), ADDRESS_BAD | st.just("10.240.0.11"))))
    if draw(st.booleans()) or "api_endpoint.port" in f.chosen:
        fields.append(("port", f.pick("api_endpoint.port", PORT_GOOD if fields else st.just("6443"),
                                      PORT_BAD | st.just("8443"))))
    if draw(st.booleans()) or "api_endpoint.hostname" in f.chosen:
        fields.append(("hostname", f.pick("api_endpoint.hostname", st.just("api.lab.example"), NAME_BAD)))
    return _mapping(fields)


@st.composite
def _document(draw: st.DrawFn) -> str:
    f = _Faults(draw)
    v6 = draw(st.sampled_from([False, False, False, True]))
    n = draw(st.integers(1, 3))
    roles = [draw(st.sampled_from([["controller"], ["controller", "worker"]]))] + [
        draw(st.sampled_from([["worker"], ["worker"], ["controller"], ["controller", "worker"]])) for _ in range(n - 1)]
    name = f.pick("cluster.name", st.sampled_from(["demo", "lab", "c" * 63]), NAME_BAD)
    service = f.pick("cluster.service_cidr",
                     st.sampled_from(["'fd00:32::/112'", "'fd00:32::/108'"] if v6 else
                                     ["10.32.0.0/24", "10.32.0.0/12", "10.32.0.0/28"]),
                     st.sampled_from(["10.0.0.0/8", "10.32.0.0/29", "'fd00:32::/64'", "10.32.0.1/24", "10.200.0.0/24",
                                      "10.32.0.0", "'fd00:32::/112'" if not v6 else "10.32.0.0/24"]) | JUNK)
    cluster = f.pick("cluster.cluster_cidr", st.just("'fd00:200::/56'" if v6 else "10.200.0.0/16"),
                     st.sampled_from(["10.32.0.0/16", "10.200.0.0/26", "'fd00:200::/32'", "10.200.0.0/24"]) | JUNK)
    cluster_fields = [("name", name), ("service_cidr", service), ("cluster_cidr", cluster)]
    if draw(st.booleans()) or "cluster.domain" in f.chosen:
        cluster_fields.append(("domain", f.pick("cluster.domain", st.just("cluster.local"), NAME_BAD)))
    lines = ["cluster: " + _mapping(cluster_fields), "nodes:"]
    bad_node = draw(st.integers(0, n - 1))  # the node a node fault goes to
    for i, r in enumerate(roles):
        def pick(field: str, good: st.SearchStrategy[str], bad: st.SearchStrategy[str], i: int = i) -> str:
            return f.pick(field, good, bad) if i == bad_node else draw(good)

        worker = "worker" in r
        fields = [
            ("name", pick("nodes.name", st.sampled_from([f"node-{i}", f"n{i}.lab.example", "w" * 50 + str(i)]
                                                        + ([] if worker else ["c" * 30 + "." + "c" * 31 + f"-{i}"])),
                          NAME_BAD)),
            ("address", pick("nodes.address", st.just(f"'fd00::{10 + i:x}'" if v6 else f"10.240.0.{10 + i}"),
                             ADDRESS_BAD)),
            ("roles", pick("nodes.roles", st.just("[" + ", ".join(r) + "]"),
                           st.sampled_from(["[]", "[master]", "controller", "[worker, on]"]))),
        ]
        if worker or ("nodes.pod_cidr" in f.chosen and i == bad_node):
            fields.append(("pod_cidr", pick(
                "nodes.pod_cidr",
                st.sampled_from([f"'fd00:200:0:{i:x}::/64'", f"'fd00:200:0:{i:x}::/121'"] if v6 else
                                [f"10.200.{16 * i}.0/24", f"10.200.{16 * i}.0/25", f"10.200.{16 * i}.0/20"]),
                st.sampled_from(["10.200.0.0/26", "10.200.0.0/24", "10.99.0.0/24", "'fd00:200::/122'",
                                 "10.200.0.1/24", "'fd00:200::/80'", "10.200.0.0"]) | JUNK)))
        lines.append("  - " + _mapping(fields))

    lb = "'fd00::100'" if v6 else "10.240.0.100"
    sections = {
        "api_endpoint": _api_endpoint(draw, f, lb),
        "pki": _some(draw, [
            ("key_algorithm", f.pick("pki.key_algorithm", st.just("ecdsa-p256"), st.sampled_from(["ed25519", "on"]))),
            ("ca_validity_days", f.pick("pki.days", st.sampled_from(["3650", "365"]), DAYS | DAYS_BAD)),
            ("cert_validity_days", f.pick("pki.days", st.sampled_from(["90", "365"]), DAYS | DAYS_BAD)),
            ("renew_within_days", f.pick("pki.days", st.sampled_from(["7", "30"]), DAYS | DAYS_BAD)),
            ("extra_sans", _some(draw, [(family, "[" + ", ".join(draw(st.lists(
                st.one_of(SAN_GOOD, SAN_BAD) if "pki.extra_sans" in f.chosen else SAN_GOOD,
                max_size=3))) + "]") for family in ("kube-apiserver", "etcd", "kubelet")]))]),
        "encryption": _mapping([("provider", f.pick("encryption.provider",
                                                    st.sampled_from(["secretbox", "aescbc", "aesgcm"]),
                                                    st.sampled_from(["kms", "on", "AESCBC", "identity"])))]),
        "ssh": _some(draw, [
            ("user", f.pick("ssh.user", st.just("root"), st.sampled_from(["'admin;id'", "'-oProxyCommand=x'",
                                                                          "u" * 32, "0day", "'a b'"]) | JUNK)),
            ("port", f.pick("ssh.port", PORT_GOOD, PORT_BAD)),
            ("become", f.pick("ssh.become", st.just("root"), st.sampled_from(["sudo", "su", "on"])))]),
        "etcd": _some(draw, [
            ("data_dir", f.pick("etcd.data_dir", st.sampled_from(["/var/lib/etcd", "/srv/etcd-data", "/data/etcd"]),
                                st.sampled_from(["/", "/etc", "/var/lib", "/usr/etcd", "/run/etcd", "/var/lib/etcd/",
                                                 "/var/lib/etcd/../x", "'/var/lib/etcd x'", "//var/lib/etcd",
                                                 "var/lib/etcd", "'/var/lib/$etcd'"]) | JUNK)),
            ("heartbeat_ms", f.pick("etcd.timing", st.sampled_from(["100", "250"]),
                                    st.sampled_from(["0100", "1:40", "5", "'100'"]))),
            ("election_ms", f.pick("etcd.timing", st.sampled_from(["2500", "5000"]),
                                   st.sampled_from(["01000", "100", "0x3e8"])))]),
        "binaries": _binaries(f),
        "versions": _versions(f),
    }
    for key, value in sections.items():
        if draw(st.integers(0, 2)) == 0 or any(c.split(".")[0] == key for c in f.chosen):
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


@st.composite
def _damaged(draw: st.DrawFn, text: str) -> str:
    """Text-level damage a file picks up: each kind reaches a different part of YAML's reader."""
    where = draw(st.integers(0, len(text)))
    kind = draw(st.sampled_from(["tab", "control", "document", "deep", "cut", "char", "dup"]))
    if kind == "tab":
        return text.replace("\n  - ", "\n\t- ", 1)
    if kind == "control":
        return text[:where] + draw(st.sampled_from(["\x07", "\x00", "\x1b", "\ufffe"])) + text[where:]
    if kind == "document":
        return text + "---\nnodes: []\n"
    if kind == "deep":
        depth = draw(st.integers(30, 600))
        return text + "versions: " + "[" * depth + "]" * depth + "\n"
    if kind == "cut":
        return text[:where]
    if kind == "dup":
        return text + text.splitlines(keepends=True)[0]
    return text[:where] + draw(st.sampled_from(list("{}[],:'\"&*!|>%@`#-"))) + text[where + 1:]


@st.composite
def inventory_texts(draw: st.DrawFn) -> str:
    """An inventory as YAML text: valid about a third of the time, wrong in one or more ways otherwise."""
    text = draw(_document())
    if draw(st.sampled_from([False] * 5 + [True])):
        text = draw(_damaged(text))
    return text
