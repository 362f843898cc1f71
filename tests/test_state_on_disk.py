"""State on disk that was damaged or edited by hand: each case is handled (reissued or rewritten,
with the reason) or refused in one line naming the file and the fix; never a traceback.

manifest.json: hardway writes build/<cluster>/<node>/manifest.json and reads it nowhere (render
rebuilds each node directory from scratch), so a manifest that is not JSON is simply replaced.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from hardway import build, inventory, jumpbox, kubeconfig, pki
from hardway.errors import HardwayError
from hardway.pki.keys import BACKDATE
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "inventory" / "sample.yaml"


@pytest.fixture(scope="module")
def inv() -> inventory.Inventory:
    return inventory.load(SAMPLE)


@pytest.fixture(scope="module")
def pristine(inv: inventory.Inventory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "pki"
    jumpbox.generate(inv, PkiState(root))
    return root


@pytest.fixture
def state(pristine: Path, tmp_path: Path) -> PkiState:
    root = tmp_path / "pki"
    shutil.copytree(pristine, root)
    return PkiState(root)


def _der(path: Path) -> bytearray:
    lines = path.read_text().splitlines()
    return bytearray(base64.b64decode("".join(lines[1:-1])))


def _write_der(path: Path, der: bytes) -> None:
    path.write_text("-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() + "-----END CERTIFICATE-----\n")


def _flip_public_key(path: Path) -> None:
    der = _der(path)
    at = der.find(bytes.fromhex("2a8648ce3d0301"))  # the P-256 curve OID inside the key
    der[at + 12] ^= 0xFF
    _write_der(path, bytes(der))


def _garble_extension(path: Path) -> None:
    der = _der(path)
    at = der.find(bytes.fromhex("551d25"))  # extendedKeyUsage's OID
    der[at + 5] ^= 0xFF
    _write_der(path, bytes(der))


LEAF_DAMAGE: dict[str, tuple[Callable[[PkiState], None], str]] = {
    "cert cut in the middle": (lambda s: s.cert("admin").write_bytes(s.cert("admin").read_bytes()[:300]),
                               "certificate file is not PEM"),
    "cert without its END line": (lambda s: s.cert("admin").write_bytes(s.cert("admin").read_bytes()[:-30]),
                                  "certificate file is not PEM"),
    "cert empty": (lambda s: s.cert("admin").write_bytes(b""), "certificate file is not PEM"),
    "cert holding a key": (lambda s: s.cert("admin").write_bytes(s.key("admin").read_bytes()),
                           "certificate file is not PEM"),
    "cert whose public key is damaged": (lambda s: _flip_public_key(s.cert("admin")), "certificate file is not PEM"),
    "cert whose extension is damaged": (lambda s: _garble_extension(s.cert("admin")), "certificate file is not PEM"),
    "key cut": (lambda s: s.key("admin").write_bytes(s.key("admin").read_bytes()[:100]),
                "key missing or unreadable"),
    "key of another cert": (lambda s: s.key("admin").write_bytes(s.key("kube-proxy").read_bytes()),
                            "key does not match the certificate"),
}


@pytest.mark.parametrize("case", sorted(LEAF_DAMAGE))
def test_a_damaged_leaf_is_reissued_with_its_reason(case: str, inv: inventory.Inventory, state: PkiState) -> None:
    damage, reason = LEAF_DAMAGE[case]
    damage(state)
    assert reason in dict((s.name, "; ".join(s.reasons)) for s in pki.check(inv, state))["admin"]
    outcomes = jumpbox.generate(inv, state)
    admin = next(o for o in outcomes if o.kind == "cert" and o.name == "admin")
    assert admin.action == "reissued" and reason in admin.reasons
    cert, key = pki.read_cert(state.cert("admin")), pki.read_key(state.key("admin"))
    assert cert is not None and key is not None
    assert pki.reasons_for(pki.spec_for(inv, "admin"), cert, key, pki.read_cert(state.cert("ca")), inv,
                           cert.not_valid_before_utc + BACKDATE, timedelta(0)) == []
    assert not kubeconfig.drift(inv, state)  # the kubeconfigs embedding it were rewritten too
    assert all(s.ok for s in pki.check(inv, state))


@pytest.mark.parametrize("case", ["public key", "extension"])
def test_a_damaged_ca_is_one_line_naming_the_file(case: str, inv: inventory.Inventory, state: PkiState) -> None:
    if case == "public key":
        _flip_public_key(state.cert("ca"))
    else:  # the CA carries no EKU: damage its basicConstraints
        der = _der(state.cert("ca"))
        at = der.find(bytes.fromhex("551d13"))
        der[at + 5] ^= 0xFF
        _write_der(state.cert("ca"), bytes(der))
    with pytest.raises(HardwayError) as err:
        jumpbox.generate(inv, state)
    assert str(err.value).startswith(f"{state.cert('ca')} is not a PEM certificate: restore it from a backup, "
                                     "or pass --rotate-ca")


HAND_EDITS: dict[str, bytes] = {
    "server changed": b"",  # filled in by the test: the real file with another server
    "not YAML": b"{{{",
    "clusters of strings": b"clusters: [x]\nusers: [y]\n",
    "cluster a string": b"clusters: [{name: a, cluster: x}]\nusers: [{name: b, user: 3}]\n",
    "nested past the recursion limit": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "not text": b"\xff\xfe\x00garbage",
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
def test_a_kubeconfig_edited_by_hand_is_rewritten_with_a_reason(case: str, inv: inventory.Inventory,
                                                                state: PkiState) -> None:
    path = state.kubeconfig("admin")
    data = HAND_EDITS[case] or path.read_bytes().replace(b"https://10.240.0.100:6443", b"https://10.9.9.9:6443")
    path.write_bytes(data)
    assert "admin" in kubeconfig.drift(inv, state)
    outcome = next(o for o in kubeconfig.ensure_kubeconfigs(inv, state) if o.name == "admin")
    assert outcome.action == "rewritten" and outcome.reasons, outcome
    assert "server https://10.9.9.9:6443 → https://10.240.0.100:6443" in outcome.reasons or case != "server changed"
    assert not kubeconfig.drift(inv, state)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args, "--inventory", str(SAMPLE)],
                          capture_output=True, text=True, timeout=120)


def test_the_cli_reissues_damaged_state_and_says_why(state: PkiState) -> None:
    _garble_extension(state.cert("admin"))
    state.kubeconfig("kube-proxy").write_bytes(b"clusters: [x]\n")
    proc = _cli("pki", "--pki-dir", str(state.root))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"reissued +cert +admin +certificate file is not PEM", proc.stdout), proc.stdout
    assert re.search(r"rewritten +kubeconfig +kube-proxy +previous file unreadable", proc.stdout), proc.stdout


def test_the_cli_refuses_a_damaged_ca_in_one_line(state: PkiState, tmp_path: Path) -> None:
    _flip_public_key(state.cert("ca"))
    for task, start in (("pki", f"error: {state.cert('ca')} is not a PEM certificate: restore it"),
                        ("pki.check", "pki.check: some certificates are missing, drifted or expiring; run invoke pki"),
                        ("render", f"error: controller-0: PKI files in {state.root} are damaged (not a whole PEM "
                                   "certificate or key): ca.crt: run `invoke pki`")):
        proc = _cli(task, "--pki-dir", str(state.root), *(["--out", str(tmp_path / "build")] if task == "render"
                                                          else []))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    assert not (tmp_path / "build").exists()


def test_a_directory_where_a_kubeconfig_belongs_is_one_line(state: PkiState) -> None:
    path = state.kubeconfig("admin")
    path.unlink()
    path.mkdir()
    proc = _cli("pki", "--pki-dir", str(state.root))
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: Is a directory: {path}", proc.stderr


def test_a_manifest_that_is_not_json_is_replaced(inv: inventory.Inventory, state: PkiState, tmp_path: Path) -> None:
    out = tmp_path / "build"
    build.write_build(inv, state, out, "worker-0")
    manifest = out / "worker-0" / "manifest.json"
    manifest.write_text("{not json")
    os.chmod(manifest, 0o000)
    build.write_build(inv, state, out, "worker-0")
    entries = json.loads(manifest.read_text())
    assert {e["path"] for e in entries} >= {"/var/lib/kubelet/kubeconfig", "/etc/systemd/system/kubelet.service"}


def test_render_never_ships_a_damaged_certificate(inv: inventory.Inventory, state: PkiState, tmp_path: Path) -> None:
    state.cert("kubelet-worker-0").write_bytes(state.cert("kubelet-worker-0").read_bytes()[:-40])
    out = tmp_path / "build"
    build.write_build(inv, state, out, "worker-1")  # another node's files are fine
    with pytest.raises(HardwayError) as err:
        build.write_build(inv, state, out, "worker-0")
    assert str(err.value) == (f"worker-0: PKI files in {state.root} are damaged (not a whole PEM certificate or key): "
                              "kubelet-worker-0.crt: run `invoke pki`")
    assert not (out / "worker-0").exists()
    jumpbox.generate(inv, state)  # the fix, as printed
    build.write_build(inv, state, out, "worker-0")
