"""hardway.pki: the certificate catalogue, issuance, idempotence, drift, CA safety and the CLI."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardway import inventory, jumpbox, pki
from hardway.errors import HardwayError
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "inventory" / "sample.yaml"
SAMPLE_TEXT = SAMPLE.read_text()

MINI_TEXT = """\
cluster:
  name: mini
  domain: corp.example
  service_cidr: 10.96.0.0/16
  cluster_cidr: 10.244.0.0/16
pki:
  extra_sans:
    kubelet: [node.example, "fd00::3"]
    etcd: [etcd.example, 192.168.50.9]
nodes:
  - {name: server, address: 192.168.50.2, roles: [controller]}
  - {name: node-0, address: 192.168.50.3, roles: [worker], pod_cidr: 10.244.0.0/24}
"""

INVENTORIES = {
    "sample": inventory.load(SAMPLE),
    "mini": inventory.parse(MINI_TEXT, "mini.yaml", base=ROOT),
}

C, S, CS = frozenset({"client"}), frozenset({"server"}), frozenset({"client", "server"})
API_DNS = {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster"}


def _row(cn, o=None, sans=(), eku=C, ca=False, issuer="ca"):
    return {"cn": cn, "o": o, "sans": set(sans), "eku": None if ca else eku, "ca": ca, "issuer": issuer}


# FIELD-NOTES' table, written out by hand for each inventory (not derived from the code under test).
EXPECTED = {
    "sample": {
        "ca": _row("hardway", ca=True),
        "etcd-ca": _row("etcd-ca", "hardway", ca=True, issuer="etcd-ca"),
        "front-proxy-ca": _row("front-proxy-ca", "hardway", ca=True, issuer="front-proxy-ca"),
        "front-proxy-client": _row("front-proxy-client", issuer="front-proxy-ca"),
        "admin": _row("admin", "system:masters"),
        "kubelet-worker-0": _row("system:node:worker-0", "system:nodes",
                                 {"DNS:worker-0", "IP:10.240.0.20", "IP:127.0.0.1"}, CS),
        "kubelet-worker-1": _row("system:node:worker-1", "system:nodes",
                                 {"DNS:worker-1", "IP:10.240.0.21", "IP:127.0.0.1"}, CS),
        "kube-proxy": _row("system:kube-proxy", "system:node-proxier"),
        "kube-controller-manager": _row("system:kube-controller-manager", "system:kube-controller-manager"),
        "kube-scheduler": _row("system:kube-scheduler", "system:kube-scheduler"),
        "kube-apiserver": _row("kubernetes", None, {
            "IP:10.32.0.1", "IP:127.0.0.1", "IP:10.240.0.10", "IP:10.240.0.11", "IP:10.240.0.12",
            "IP:10.240.0.100", "DNS:kubernetes.hardway.lan", "DNS:api.hardway.lan",
            "DNS:kubernetes.default.svc.cluster.local", *(f"DNS:{d}" for d in API_DNS)}, S),
        "apiserver-kubelet-client": _row("kubernetes"),
        "apiserver-etcd-client": _row("kube-apiserver-etcd-client", issuer="etcd-ca"),
        "kube-apiserver-lb": _row("hardway:kube-apiserver-lb"),
        **{f"etcd-controller-{i}": _row(f"controller-{i}", None, {
            f"IP:10.240.0.1{i}", "IP:127.0.0.1", f"DNS:controller-{i}", "DNS:localhost"}, CS, issuer="etcd-ca")
           for i in range(3)},
        "service-accounts": _row("service-accounts"),
    },
    "mini": {
        "ca": _row("mini", ca=True),
        "etcd-ca": _row("etcd-ca", "mini", ca=True, issuer="etcd-ca"),
        "front-proxy-ca": _row("front-proxy-ca", "mini", ca=True, issuer="front-proxy-ca"),
        "front-proxy-client": _row("front-proxy-client", issuer="front-proxy-ca"),
        "admin": _row("admin", "system:masters"),
        "kubelet-node-0": _row("system:node:node-0", "system:nodes", {
            "DNS:node-0", "IP:192.168.50.3", "IP:127.0.0.1", "DNS:node.example", "IP:fd00::3"}, CS),
        "kube-proxy": _row("system:kube-proxy", "system:node-proxier"),
        "kube-controller-manager": _row("system:kube-controller-manager", "system:kube-controller-manager"),
        "kube-scheduler": _row("system:kube-scheduler", "system:kube-scheduler"),
        "kube-apiserver": _row("kubernetes", None, {
            "IP:10.96.0.1", "IP:127.0.0.1", "IP:192.168.50.2", "DNS:kubernetes.default.svc.corp.example",
            *(f"DNS:{d}" for d in API_DNS)}, S),
        "apiserver-kubelet-client": _row("kubernetes"),
        "apiserver-etcd-client": _row("kube-apiserver-etcd-client", issuer="etcd-ca"),
        "etcd-server": _row("server", None, {"IP:192.168.50.2", "IP:127.0.0.1", "DNS:server", "DNS:localhost",
                                             "DNS:etcd.example", "IP:192.168.50.9"}, CS, issuer="etcd-ca"),
        "service-accounts": _row("service-accounts"),
    },
}

CASES = [(label, spec.name) for label, inv in INVENTORIES.items() for spec in pki.catalogue(inv)]


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def by_name(outcomes, kind="cert"):
    return {o.name: o for o in outcomes if o.kind == kind}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, PkiState]:
    """One full PKI per inventory, generated once per module; tests that change it work on a copy."""
    states = {}
    for label, inv in INVENTORIES.items():
        state = PkiState(tmp_path_factory.mktemp(label) / "pki")
        jumpbox.generate(inv, state)
        states[label] = state
    return states


@pytest.fixture
def sample_copy(built, tmp_path) -> PkiState:
    dst = tmp_path / "pki"
    shutil.copytree(built["sample"].root, dst, copy_function=shutil.copy2)
    return PkiState(dst)


def sample_with(old: str, new: str):
    assert old in SAMPLE_TEXT
    return inventory.parse(SAMPLE_TEXT.replace(old, new), str(SAMPLE), base=SAMPLE.parent)


# ---------------------------------------------------------------------------------------------
# The catalogue against the table


@pytest.mark.parametrize("label", INVENTORIES)
def test_catalogue_names_are_the_table(label):
    names = [s.name for s in pki.catalogue(INVENTORIES[label])]
    assert names[0] == "ca" and len(names) == len(set(names))
    assert set(names) == set(EXPECTED[label])


@pytest.mark.parametrize(("label", "name"), CASES)
def test_issued_cert_matches_table(built, label, name):
    want = EXPECTED[label][name]
    cert = load_cert(built[label].cert(name))
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    o = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert cn == [want["cn"]]
    assert o == ([want["o"]] if want["o"] else [])
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = {f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)} | \
               {f"IP:{i}" for i in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        sans = set()
    assert sans == want["sans"]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is want["ca"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_cert_sign is want["ca"] and ku.crl_sign is want["ca"]
    assert cert.issuer == load_cert(built[label].cert(want["issuer"])).subject
    if want["ca"]:
        assert cert.issuer == cert.subject
    else:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        names = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
        assert eku == {names[u] for u in want["eku"]}
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


@pytest.mark.parametrize("label", INVENTORIES)
def test_openssl_verifies_every_cert_for_its_purpose(built, label):
    state = built[label]
    for spec in pki.catalogue(INVENTORIES[label]):
        purposes = (["sslclient"] if spec.client else []) + (["sslserver"] if spec.server else []) or ["any"]
        for purpose in purposes:
            r = subprocess.run(
                ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", state.cert(spec.issuer),
                 state.cert(spec.name)], capture_output=True, text=True,
            )
            assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), (spec.name, purpose, r.stderr)
        if not spec.is_ca:  # and no other CA accepts it: etcd's trust is etcd's alone
            other = next(c for c in pki.CA_NAMES if c != spec.issuer)
            r = subprocess.run(["openssl", "verify", "-CAfile", state.cert(other), state.cert(spec.name)],
                               capture_output=True, text=True)
            assert r.returncode != 0, (spec.name, other)


def test_sample_specifics(built):
    state = built["sample"]
    kubelet = load_cert(state.cert("kubelet-worker-0")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "10.240.0.20" in {str(i) for i in kubelet.get_values_for_type(x509.IPAddress)}
    api = load_cert(state.cert("kube-apiserver")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "10.32.0.1" in {str(i) for i in api.get_values_for_type(x509.IPAddress)}
    assert "kubernetes.default.svc.cluster.local" in api.get_values_for_type(x509.DNSName)
    sched = load_cert(state.cert("kube-scheduler"))
    assert sched.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:kube-scheduler"
    pub = state.public_key("service-accounts").read_bytes()
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert pub == pki.public_key_pem(pki.read_key(state.key("service-accounts")))


def test_file_modes(built):
    state = built["sample"]
    assert state.root.stat().st_mode & 0o777 == 0o700
    for spec in pki.catalogue(INVENTORIES["sample"]):
        assert state.key(spec.name).stat().st_mode & 0o777 == 0o600, spec.name
        assert state.cert(spec.name).stat().st_mode & 0o777 == 0o644, spec.name
    assert state.public_key("service-accounts").stat().st_mode & 0o777 == 0o644
    assert not list(state.root.rglob(".*.tmp"))


def test_rsa_4096_keys_are_4096_bits(tmp_path):
    inv = inventory.parse(MINI_TEXT.replace("pki:\n", "pki:\n  key_algorithm: rsa-4096\n"), "mini.yaml")
    assert inv.key_algorithm == "rsa-4096"
    state = PkiState(tmp_path / "pki")
    out = pki.ensure_certificates(inv, state, only={"admin"})
    assert [(o.name, o.action) for o in out] == [("ca", "issued"), ("admin", "issued")]
    for name in ("ca", "admin"):
        key = pki.read_key(state.key(name))
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
        assert state.key(name).stat().st_mode & 0o777 == 0o600
    assert load_cert(state.cert("admin")).extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    r = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", state.cert("ca"), state.cert("admin")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not state.cert("kube-proxy").exists()


# ---------------------------------------------------------------------------------------------
# Idempotence and drift


def test_second_run_keeps_every_byte_and_mtime(sample_copy):
    before = snapshot(sample_copy.root)
    out = jumpbox.generate(INVENTORIES["sample"], sample_copy)
    assert {o.action for o in out} == {"kept"}, pki.format_outcomes(out)
    assert all(not o.reasons for o in out)
    assert snapshot(sample_copy.root) == before


def test_endpoint_change_reissues_only_the_apiserver(sample_copy):
    inv = sample_with("address: 10.240.0.100", "address: 10.240.0.200")
    before = snapshot(sample_copy.root)
    out = jumpbox.generate(inv, sample_copy)
    certs = by_name(out)
    assert {n for n, o in certs.items() if o.action != "kept"} == {"kube-apiserver"}
    api = certs["kube-apiserver"]
    assert api.action == "reissued"
    assert set(api.reasons) == {"SAN added: IP 10.240.0.200", "SAN removed: IP 10.240.0.100"}
    kcs = by_name(out, "kubeconfig")
    rewritten = {n for n, o in kcs.items() if o.action != "kept"}
    assert rewritten == {"admin", "kube-proxy", "kubelet-worker-0", "kubelet-worker-1"}
    for name in rewritten:
        assert kcs[name].action == "rewritten"
        assert kcs[name].reasons == ("server https://10.240.0.100:6443 → https://10.240.0.200:6443",)
    assert changed(before, snapshot(sample_copy.root)) == {
        "kube-apiserver.crt", "kubeconfigs/admin.kubeconfig", "kubeconfigs/kube-proxy.kubeconfig",
        "kubeconfigs/kubelet-worker-0.kubeconfig", "kubeconfigs/kubelet-worker-1.kubeconfig",
    }  # the apiserver keeps its key; the CA and everything else are untouched
    ips = load_cert(sample_copy.cert("kube-apiserver")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert "10.240.0.200" in map(str, ips) and "10.240.0.100" not in map(str, ips)


def test_expiring_within_window_is_reissued_with_reason(sample_copy):
    inv = INVENTORIES["sample"]
    later = datetime.now(UTC) + timedelta(days=340)
    expires = load_cert(sample_copy.cert("admin")).not_valid_after_utc
    out = pki.ensure_certificates(inv, sample_copy, now=later)
    certs = by_name(out)
    assert certs["ca"].action == certs["etcd-ca"].action == "kept"
    for name, o in certs.items():
        if name not in pki.CA_NAMES:
            assert o.action == "reissued", name
            assert o.reasons == (f"expires {expires:%Y-%m-%d} (within 30 days)",), o.reasons
    assert load_cert(sample_copy.cert("admin")).not_valid_after_utc > later + timedelta(days=300)
    wider = pki.ensure_certificates(inv, sample_copy, now=later, renew_within=timedelta(days=10))
    assert {o.action for o in wider} == {"kept"}


def _forge(state: PkiState, inv, name: str, **changes) -> None:
    """Replace ``name``'s certificate by one signed with the same CA but differing in ``changes``."""
    spec = dataclasses.replace(pki.spec_for(inv, name), **changes)
    ca_cert, ca_key = load_cert(state.cert("ca")), pki.read_key(state.key("ca"))
    cert = pki.issue(spec, pki.read_key(state.key(name)), inv, datetime.now(UTC), ca_cert, ca_key)
    state.cert(name).write_bytes(pki.cert_pem(cert))


def test_tutorial_scheduler_typo_is_drift(sample_copy):
    inv = INVENTORIES["sample"]
    _forge(sample_copy, inv, "kube-scheduler", organization="system:system:kube-scheduler")
    status = {s.name: s for s in pki.check(inv, sample_copy)}
    want = ("subject O changed: system:system:kube-scheduler → system:kube-scheduler",)
    assert status["kube-scheduler"].reasons == want
    assert pki.has_problems(list(status.values()))
    out = by_name(pki.ensure_certificates(inv, sample_copy))
    assert out["kube-scheduler"].action == "reissued" and out["kube-scheduler"].reasons == want
    assert [n for n, o in out.items() if o.action != "kept"] == ["kube-scheduler"]
    assert not pki.has_problems(pki.check(inv, sample_copy))


def test_eku_and_san_drift_reasons(sample_copy):
    inv = INVENTORIES["sample"]
    _forge(sample_copy, inv, "kubelet-worker-0", server=False, dns_names=())
    reasons = set(by_name(pki.ensure_certificates(inv, sample_copy))["kubelet-worker-0"].reasons)
    assert reasons == {"EKU changed: client → client+server", "SAN added: DNS worker-0"}


def test_cert_from_another_ca_is_reissued(sample_copy, tmp_path):
    inv = INVENTORIES["sample"]
    other = PkiState(tmp_path / "other")
    pki.ensure_certificates(inv, other, only={"admin"})
    shutil.copy(other.cert("admin"), sample_copy.cert("admin"))
    shutil.copy(other.key("admin"), sample_copy.key("admin"))
    out = by_name(pki.ensure_certificates(inv, sample_copy))
    assert out["admin"].reasons == ("not signed by the current CA",)
    assert out["admin"].action == "reissued"
    assert subprocess.run(["openssl", "verify", "-CAfile", sample_copy.cert("ca"), sample_copy.cert("admin")],
                          capture_output=True).returncode == 0


def test_reissue_with_new_key_type_for_leaf_keeps_ca_error(sample_copy):
    inv = sample_with("key_algorithm: ecdsa-p256", "key_algorithm: rsa-2048")
    before = snapshot(sample_copy.root)
    with pytest.raises(HardwayError, match=r"key type ecdsa-p256 → rsa-2048.*--rotate-ca"):
        pki.ensure_certificates(inv, sample_copy)
    assert snapshot(sample_copy.root) == before


def test_missing_leaf_is_issued_others_kept(sample_copy):
    sample_copy.cert("kube-proxy").unlink()
    sample_copy.key("kube-proxy").unlink()
    out = by_name(pki.ensure_certificates(INVENTORIES["sample"], sample_copy))
    assert {n: o.action for n, o in out.items() if o.action != "kept"} == {"kube-proxy": "issued"}
    assert sample_copy.key("kube-proxy").stat().st_mode & 0o777 == 0o600


def test_key_mode_is_tightened(sample_copy):
    os.chmod(sample_copy.key("admin"), 0o644)
    assert "admin.key mode 0644 (want 0600)" in by_name_status(sample_copy)["admin"].reasons
    out = by_name(pki.ensure_certificates(INVENTORIES["sample"], sample_copy))
    assert out["admin"].action == "kept" and out["admin"].reasons == ("admin.key mode 0644 → 0600",)
    assert sample_copy.key("admin").stat().st_mode & 0o777 == 0o600


def by_name_status(state):
    return {s.name: s for s in pki.check(INVENTORIES["sample"], state)}


def test_only_limits_leaves_and_rejects_unknown_names(sample_copy):
    for name in ("admin", "kube-proxy"):
        sample_copy.cert(name).unlink()
    out = pki.ensure_certificates(INVENTORIES["sample"], sample_copy, only={"admin"})
    assert [(o.name, o.action) for o in out] == [("ca", "kept"), ("admin", "issued")]
    assert not sample_copy.cert("kube-proxy").exists()
    with pytest.raises(HardwayError, match="unknown certificate"):
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy, only={"nope"})


# ---------------------------------------------------------------------------------------------
# The CA is never replaced silently


def test_missing_ca_with_leaves_present_is_an_error(sample_copy):
    sample_copy.cert("ca").unlink()
    sample_copy.key("ca").unlink()
    before = snapshot(sample_copy.root)
    with pytest.raises(HardwayError, match="--rotate-ca") as err:
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy)
    assert "ca.crt is missing" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(sample_copy.root) == before


def test_ca_cert_without_key_names_the_file(sample_copy):
    sample_copy.key("ca").unlink()
    with pytest.raises(HardwayError, match=r"ca\.key is missing.*restore ca\.key"):
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy)


def test_ca_key_mismatch_is_an_error(sample_copy, tmp_path):
    other = PkiState(tmp_path / "other")
    pki.ensure_certificates(INVENTORIES["sample"], other, only=())
    shutil.copy(other.key("ca"), sample_copy.key("ca"))
    with pytest.raises(HardwayError, match=r"ca\.key does not belong to .*ca\.crt"):
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy)


def test_expiring_ca_needs_rotate(sample_copy):
    later = datetime.now(UTC) + timedelta(days=3640)
    with pytest.raises(HardwayError, match=r"expires .* \(within 30 days\).*--rotate-ca"):
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy, now=later)


def test_rotate_ca_reissues_everything(sample_copy):
    inv = INVENTORIES["sample"]
    old_ca = sample_copy.cert("ca").read_bytes()
    before = snapshot(sample_copy.root)
    out = jumpbox.generate(inv, sample_copy, rotate_ca=True)
    certs = by_name(out)
    assert {o.action for o in certs.values()} == {"reissued"}
    assert "every certificate is reissued" in certs["ca"].reasons[0]
    assert "every certificate is reissued" in certs["etcd-ca"].reasons[0]
    specs = {s.name: s for s in pki.catalogue(inv)}
    assert all("not signed by the current CA" in o.reasons for n, o in certs.items() if specs[n].issuer == "ca"
               and n != "ca")
    assert all("not signed by the current etcd CA" in o.reasons for n, o in certs.items()
               if specs[n].issuer == "etcd-ca" and n != "etcd-ca")
    assert {o.action for o in by_name(out, "kubeconfig").values()} == {"rewritten"}
    assert all("CA changed" in o.reasons for o in by_name(out, "kubeconfig").values())
    assert sample_copy.cert("ca").read_bytes() != old_ca
    after = snapshot(sample_copy.root)
    assert after["ca.key"] != before["ca.key"]
    assert after["admin.key"] == before["admin.key"]  # leaf keys of the right type are reused
    assert after["encryption-config.yaml"] == before["encryption-config.yaml"]
    for ca in pki.CA_NAMES:
        certs_paths = [sample_copy.cert(n) for n in certs if specs[n].issuer == ca]
        r = subprocess.run(["openssl", "verify", "-CAfile", sample_copy.cert(ca), *certs_paths],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count(": OK") == len(certs_paths), r.stdout + r.stderr
        # the old pair is kept: nodes still trust it until they are re-pushed
        prev = f"{ca}.prev"
        assert (after[f"{prev}.key"][0], after[f"{prev}.crt"][0]) == (before[f"{ca}.key"][0], before[f"{ca}.crt"][0])
        assert after[f"{prev}.key"][2] == 0o600


def test_a_cluster_made_before_the_etcd_ca_gets_one_and_only_etcd_certs_move(sample_copy):
    """The state of a cluster on one CA (etcd certs signed by the cluster CA, no etcd-ca): `invoke pki`
    issues the etcd CA and reissues exactly what it signs; nothing else is touched."""
    inv = INVENTORIES["sample"]
    ca_cert, ca_key = load_cert(sample_copy.cert("ca")), pki.read_key(sample_copy.key("ca"))
    now = datetime.now(UTC)
    for spec in pki.catalogue(inv):
        if spec.issuer == "etcd-ca" and not spec.is_ca:  # as the one-CA layout issued them
            old = dataclasses.replace(spec, issuer="ca")
            key = pki.read_key(sample_copy.key(spec.name))
            sample_copy.cert(spec.name).write_bytes(pki.cert_pem(pki.issue(old, key, inv, now, ca_cert, ca_key)))
    for name in ("etcd-ca", "apiserver-etcd-client"):
        sample_copy.cert(name).unlink()
        sample_copy.key(name).unlink()
    before = snapshot(sample_copy.root)
    out = by_name(pki.ensure_certificates(inv, sample_copy))
    moved = {n: o for n, o in out.items() if o.action != "kept"}
    assert moved["etcd-ca"].action == moved["apiserver-etcd-client"].action == "issued"
    members = [f"etcd-controller-{i}" for i in range(3)]
    assert sorted(moved) == sorted(["etcd-ca", "apiserver-etcd-client", *members])
    assert all(moved[m].reasons == ("not signed by the current etcd CA",) for m in members)
    after = snapshot(sample_copy.root)
    assert all(after[f"{m}.key"] == before[f"{m}.key"] for m in members), "member keys are kept"
    assert not pki.has_problems(pki.check(inv, sample_copy))


def test_a_lost_etcd_ca_is_never_replaced_silently(sample_copy):
    sample_copy.cert("etcd-ca").unlink()
    before = snapshot(sample_copy.root)
    with pytest.raises(HardwayError, match=r"etcd-ca\.crt is missing but 4 certificate\(s\) signed by it exist.*"
                                           r"restore etcd-ca\.crt and etcd-ca\.key"):
        pki.ensure_certificates(INVENTORIES["sample"], sample_copy)
    assert snapshot(sample_copy.root) == before


def test_check_lists_each_ca_and_the_issuer_of_every_certificate(built):
    statuses = pki.check(INVENTORIES["sample"], built["sample"])
    rows = {s.name: s.ca for s in statuses}
    assert rows["ca"] == rows["etcd-ca"] == "-"
    assert rows["etcd-controller-0"] == rows["apiserver-etcd-client"] == "etcd-ca"
    assert rows["kubelet-worker-0"] == rows["kube-apiserver"] == "ca"
    table = pki.format_check_table(statuses)
    assert "etcd-ca" in table.splitlines()[2]


def test_failed_write_leaves_no_temp_files(tmp_path, monkeypatch):
    state = PkiState(tmp_path / "pki")
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="No space"):
        pki.ensure_certificates(INVENTORIES["mini"], state)
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    out = pki.ensure_certificates(INVENTORIES["mini"], state)  # and the next run repairs the rest
    assert {o.action for o in out} >= {"kept", "issued"}
    assert not pki.has_problems(pki.check(INVENTORIES["mini"], state))


# ---------------------------------------------------------------------------------------------
# Reports


def test_check_table_and_missing(sample_copy):
    inv = INVENTORIES["sample"]
    statuses = pki.check(inv, sample_copy)
    assert not pki.has_problems(statuses)
    table = pki.format_check_table(statuses)
    lines = table.splitlines()
    assert lines[0].split() == ["CERTIFICATE", "EXPIRES", "RESIDUAL", "TIME", "CA", "DRIFT"]
    assert len(lines) == 1 + len(pki.catalogue(inv))
    admin = next(line for line in lines if line.startswith("admin "))
    assert " 364d " in admin and admin.rstrip().endswith("-")
    sample_copy.cert("kube-proxy").unlink()
    statuses = pki.check(inv, sample_copy)
    assert pki.has_problems(statuses)
    row = next(line for line in pki.format_check_table(statuses).splitlines() if line.startswith("kube-proxy"))
    assert row.split()[1] == "missing" and row.rstrip().endswith("missing")


def test_format_outcomes_aligns_columns():
    text = pki.format_outcomes([
        pki.Generated("cert", "kube-apiserver", "reissued", ("SAN added: IP 10.0.0.1", "EKU changed")),
        pki.Generated("kubeconfig", "admin", "kept"),
    ])
    first, second, summary = text.splitlines()
    assert first.index("kube-apiserver") == second.index("admin")
    assert first.index("cert") == second.index("kubeconfig")
    assert first.endswith("SAN added: IP 10.0.0.1; EKU changed") and second.endswith("  -")
    assert summary == "1 reissued, 1 kept"


# ---------------------------------------------------------------------------------------------
# The CLI wiring (real invoke, real files)


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_generate_and_check_exit_codes(tmp_path):
    pki_dir = tmp_path / "pki"
    common = ("--inventory", str(SAMPLE), "--pki-dir", str(pki_dir))
    r = _invoke("pki", *common)
    assert r.returncode == 0, r.stderr
    assert "issued   cert               kube-apiserver" in r.stdout
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    key_body = PkiState(pki_dir).key("ca").read_text().splitlines()[1]
    assert key_body not in r.stdout + r.stderr
    assert (pki_dir / "kubeconfigs" / "kubelet-worker-1.kubeconfig").is_file()
    assert (pki_dir / "encryption-config.yaml").is_file()

    r = _invoke("pki.check", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kube-scheduler" in r.stdout

    _forge(PkiState(pki_dir), INVENTORIES["sample"], "kube-scheduler", organization="system:system:kube-scheduler")
    r = _invoke("pki.check", *common)
    assert r.returncode == 1
    assert "subject O changed" in r.stdout and "run invoke pki" in r.stderr

    (pki_dir / "ca.crt").unlink()
    r = _invoke("pki", *common)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: ") and "--rotate-ca" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
