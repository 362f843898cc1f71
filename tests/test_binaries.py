"""Binary sources: a local path, or a URL whose download must match its sha256 (served on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardway import binaries
from hardway.errors import HardwayError
from hardway.inventory import BinarySource

PAYLOAD = b"\x7fELF fake etcd binary"


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("etcd-v9/README.md", b"docs"), ("etcd-v9/etcd", PAYLOAD)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TARBALL = _tarball()
SERVER_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def _server_tarball() -> bytes:
    """Shaped like kubernetes-server-linux-amd64.tar.gz: kubernetes/server/bin/<binary>, with image
    tarballs and tags named after the binaries beside them (kube-apiserver.tar, .docker_tag)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in SERVER_BINARIES:
            for path, data in ((f"kubernetes/server/bin/{name}.tar", b"image"),
                               (f"kubernetes/server/bin/{name}.docker_tag", b"v1.32.3"),
                               (f"kubernetes/server/bin/{name}", f"\x7fELF {name}".encode())):
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SERVER_TARBALL = _server_tarball()
FILES = {"/etcd": PAYLOAD, "/etcd-v9-linux-amd64.tar.gz": TARBALL,
         "/v1.32.3/kubernetes-server-linux-amd64.tar.gz": SERVER_TARBALL}
GETS: list[str] = []


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            GETS.append(self.path)
            body = FILES.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_url_download_is_checked_and_cached(server: str, tmp_path: Path) -> None:
    source = BinarySource("etcd", url=f"{server}/etcd", sha256=sha(PAYLOAD))
    got = binaries.fetch(source, tmp_path)
    assert got.read_bytes() == PAYLOAD and got.stat().st_mode & 0o777 == 0o755
    assert binaries.fetch(source, tmp_path) == got  # cached: no second download needed


def test_tarball_member_named_like_the_binary_is_taken(server: str, tmp_path: Path) -> None:
    source = BinarySource("etcd", url=f"{server}/etcd-v9-linux-amd64.tar.gz", sha256=sha(TARBALL))
    assert binaries.fetch(source, tmp_path).read_bytes() == PAYLOAD


def test_tampered_download_is_refused_and_nothing_is_cached(server: str, tmp_path: Path) -> None:
    source = BinarySource("etcd", url=f"{server}/etcd", sha256="0" * 64)
    with pytest.raises(HardwayError, match=r"has sha256 [0-9a-f]{64}, the inventory says 0{64}; refusing it"):
        binaries.fetch(source, tmp_path)
    assert not any(tmp_path.rglob("etcd*"))


def test_tarball_without_the_binary_is_an_error(server: str, tmp_path: Path) -> None:
    source = BinarySource("kubelet", url=f"{server}/etcd-v9-linux-amd64.tar.gz", sha256=sha(TARBALL))
    with pytest.raises(HardwayError, match="holds no file named 'kubelet'"):
        binaries.fetch(source, tmp_path)


def test_unreachable_url_is_one_line(server: str, tmp_path: Path) -> None:
    source = BinarySource("etcd", url=f"{server}/missing", sha256=sha(PAYLOAD))
    with pytest.raises(HardwayError, match=r"binaries.etcd: cannot download .*/missing"):
        binaries.fetch(source, tmp_path)


def test_local_path_missing_or_mismatched(tmp_path: Path) -> None:
    with pytest.raises(HardwayError, match="does not exist; fix the path"):
        binaries.fetch(BinarySource("etcd", path=tmp_path / "nope"), tmp_path)
    f = tmp_path / "etcd"
    f.write_bytes(PAYLOAD)
    assert binaries.fetch(BinarySource("etcd", path=f), tmp_path) == f
    with pytest.raises(HardwayError, match=r"has sha256 .*; replace the file or correct the sha256"):
        binaries.fetch(BinarySource("etcd", path=f, sha256="1" * 64), tmp_path)


def test_one_server_tarball_serves_every_binary_and_is_fetched_once(server: str, tmp_path: Path) -> None:
    from hardway import inventory

    url = f"{server}/v1.32.3/kubernetes-server-linux-amd64.tar.gz"
    text = ("cluster: {name: demo, service_cidr: 10.32.0.0/24, cluster_cidr: 10.200.0.0/16}\n"
            "nodes: [{name: c, address: 10.0.0.10, roles: [controller]}]\nbinaries:\n"
            + "".join(f"  {n}: {{url: '{url}', sha256: {sha(SERVER_TARBALL)}}}\n" for n in SERVER_BINARIES))
    inv = inventory.parse(text, "inv.yaml")
    GETS.clear()
    paths = binaries.fetch_all(inv, SERVER_BINARIES, tmp_path)
    assert GETS == ["/v1.32.3/kubernetes-server-linux-amd64.tar.gz"], "one download for four binaries"
    assert [p.read_bytes() for p in paths] == [f"\x7fELF {n}".encode() for n in SERVER_BINARIES]
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in paths)
    assert [binaries.resolve(inv, n, tmp_path) for n in SERVER_BINARIES] == paths
    binaries.fetch_all(inv, SERVER_BINARIES, tmp_path)
    assert len(GETS) == 1, "a second run downloads nothing"
