"""hardway.kubeconfig: every kubeconfig read back by the real kubectl, written only when bytes change."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hardway import inventory, kubeconfig, pki
from hardway.errors import HardwayError
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "inventory" / "sample.yaml"
INV = inventory.load(SAMPLE)
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

REMOTE, LOCAL = "https://10.240.0.100:6443", "https://127.0.0.1:6443"
# name -> (certificate it embeds, server, user name = the cert's CN), written out from the brief.
EXPECTED = {
    "admin": ("admin", REMOTE, "admin"),
    "admin-local": ("admin", LOCAL, "admin"),
    "kube-controller-manager": ("kube-controller-manager", LOCAL, "system:kube-controller-manager"),
    "kube-scheduler": ("kube-scheduler", LOCAL, "system:kube-scheduler"),
    "kube-proxy": ("kube-proxy", REMOTE, "system:kube-proxy"),
    "kubelet-worker-0": ("kubelet-worker-0", REMOTE, "system:node:worker-0"),
    "kubelet-worker-1": ("kubelet-worker-1", REMOTE, "system:node:worker-1"),
}


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> PkiState:
    st = PkiState(tmp_path_factory.mktemp("kc") / "pki")
    pki.ensure_certificates(INV, st)
    out = kubeconfig.ensure_kubeconfigs(INV, st)
    assert [(o.kind, o.name, o.action) for o in out] == [("kubeconfig", n, "written") for n in EXPECTED]
    return st


@pytest.fixture
def copy(state, tmp_path) -> PkiState:
    shutil.copytree(state.root, tmp_path / "pki", copy_function=shutil.copy2)
    return PkiState(tmp_path / "pki")


def kubectl_view(path: Path) -> dict:
    r = subprocess.run([KUBECTL, "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def spki(obj) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_exactly_the_expected_files(state):
    files = sorted(p.name for p in (state.root / "kubeconfigs").iterdir())
    assert files == sorted(f"{n}.kubeconfig" for n in EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_kubectl_reads_each_kubeconfig(state, name):
    cert_name, server, user = EXPECTED[name]
    path = state.kubeconfig(name)
    assert path.stat().st_mode & 0o777 == 0o600
    view = kubectl_view(path)
    assert view["current-context"] == "default"
    [ctx] = view["contexts"]
    assert ctx == {"name": "default", "context": {"cluster": "hardway", "user": user}}
    [cluster] = view["clusters"]
    assert cluster["name"] == "hardway" and cluster["cluster"]["server"] == server
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == state.cert("ca").read_bytes()
    [u] = view["users"]
    assert u["name"] == user
    crt_pem = base64.b64decode(u["user"]["client-certificate-data"])
    key_pem = base64.b64decode(u["user"]["client-key-data"])
    assert crt_pem == state.cert(cert_name).read_bytes()
    cert = x509.load_pem_x509_certificate(crt_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert spki(cert) == spki(key)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == user


def test_plain_yaml_shape(state):
    doc = yaml.safe_load(state.kubeconfig("admin").read_bytes())
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config"
    assert list(doc["users"][0]["user"]) == ["client-certificate-data", "client-key-data"]


def test_second_run_keeps_bytes_and_mtime(copy):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (copy.root / "kubeconfigs").iterdir()}
    out = kubeconfig.ensure_kubeconfigs(INV, copy)
    assert {(o.action, o.reasons) for o in out} == {("kept", ())}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (copy.root / "kubeconfigs").iterdir()} == before


def test_reissued_client_cert_rewrites_only_its_kubeconfig(copy):
    copy.cert("kube-proxy").unlink()
    assert {o.name: o.action for o in pki.ensure_certificates(INV, copy)}["kube-proxy"] == "issued"
    out = {o.name: o for o in kubeconfig.ensure_kubeconfigs(INV, copy)}
    assert out.pop("kube-proxy").reasons == ("client certificate reissued",)
    assert {o.action for o in out.values()} == {"kept"}
    crt = kubectl_view(copy.kubeconfig("kube-proxy"))["users"][0]["user"]["client-certificate-data"]
    assert base64.b64decode(crt) == copy.cert("kube-proxy").read_bytes()


def test_hand_edited_kubeconfig_is_rewritten(copy):
    path = copy.kubeconfig("kube-scheduler")
    path.write_bytes(path.read_bytes().replace(b"https://127.0.0.1:6443", b"https://10.9.9.9:6443"))
    out = {o.name: o for o in kubeconfig.ensure_kubeconfigs(INV, copy)}
    assert out["kube-scheduler"].action == "rewritten"
    assert out["kube-scheduler"].reasons == ("server https://10.9.9.9:6443 → https://127.0.0.1:6443",)
    assert kubectl_view(path)["clusters"][0]["cluster"]["server"] == LOCAL


def test_loose_mode_is_tightened(copy):
    os.chmod(copy.kubeconfig("admin"), 0o644)
    out = {o.name: o for o in kubeconfig.ensure_kubeconfigs(INV, copy)}
    assert out["admin"].action == "kept" and out["admin"].reasons == ("mode 0644 → 0600",)
    assert copy.kubeconfig("admin").stat().st_mode & 0o777 == 0o600


def test_missing_cert_is_a_user_error_and_writes_nothing(copy):
    copy.cert("kubelet-worker-1").unlink()
    shutil.rmtree(copy.root / "kubeconfigs")
    with pytest.raises(HardwayError, match=r"kubelet-worker-1\.crt, which is missing; run invoke pki"):
        kubeconfig.ensure_kubeconfigs(INV, copy)
    assert list((copy.root / "kubeconfigs").iterdir()) == []


def test_install_admin_writes_0600_keeps_an_equal_file_and_never_clobbers_another(inv, state, tmp_path) -> None:
    target = tmp_path / "home" / ".kube" / "config"
    said = kubeconfig.install_admin(inv, state, target)
    assert said.endswith("(0600)") and target.stat().st_mode & 0o777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load(target.read_text())["clusters"][0]["cluster"]["server"] == "https://10.240.0.100:6443"
    assert kubeconfig.install_admin(inv, state, target).endswith("(kept)")
    target.write_text("apiVersion: v1\nkind: Config\n# someone else's\n")
    with pytest.raises(HardwayError, match=r"exists and is another kubeconfig; pass --force"):
        kubeconfig.install_admin(inv, state, target)
    assert "someone else's" in target.read_text()
    kubeconfig.install_admin(inv, state, target, force=True)
    [kept] = list(target.parent.glob("config.hardway-orig-*"))
    assert "someone else's" in kept.read_text() and kept.stat().st_mode & 0o777 == 0o600
