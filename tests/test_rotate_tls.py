"""After an address change, real TLS clients accept the rotated apiserver cert on the NEW address only.

openssl s_server presents the rotated kube-apiserver certificate on loopback and demands a client
certificate; curl, with the CA bundle and the admin client cert, is pointed at the server through
--connect-to, so it verifies against the URL's address while every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hardway import inventory, pki
from hardway.state import PkiState

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "inventory" / "sample.yaml").read_text()
OLD, NEW = "10.240.0.100", "10.240.0.200"

pytestmark = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")),
                                reason="needs openssl and curl (scripts/setup.sh installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    state = PkiState(tmp_path / "pki")
    pki.ensure_certificates(inventory.parse(SAMPLE, "old.yaml"), state)
    outcomes = pki.ensure_certificates(inventory.parse(SAMPLE.replace(OLD, NEW), "new.yaml"), state)
    assert [o.name for o in outcomes if o.action == "reissued"] == ["kube-apiserver"]
    port = free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(state.cert("kube-apiserver")),
         "-key", str(state.key("kube-apiserver")), "-CAfile", str(state.cert("ca")), "-Verify", "1", "-www",
         "-quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield state, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def curl(state: PkiState, port: int, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(state.cert("ca")), "--cert", str(state.cert("admin")),
         "--key", str(state.key("admin")), "--connect-to", f"{address}:6443:127.0.0.1:{port}",
         f"https://{address}:6443/"],
        capture_output=True, text=True, timeout=30,
    )


def test_new_address_verifies_and_old_address_is_a_hostname_mismatch(server) -> None:
    state, port = server
    ok = curl(state, port, NEW)
    assert ok.returncode == 0, ok.stderr
    assert "s_server" in ok.stdout  # the -www status page: the TLS session, client cert included, completed
    old = curl(state, port, OLD)
    assert old.returncode == 60, old.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert "no alternative certificate subject name matches target" in old.stderr
