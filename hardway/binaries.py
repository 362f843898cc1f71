"""Where the binaries hardway distributes come from: a local file, or a URL checked by sha256.

A URL may be a release tarball: several binaries can name the same one (the official
``kubernetes-server-linux-<arch>.tar.gz`` holds kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl, kubelet and kube-proxy), each taking the member named like it. The download is
kept in the cache by its sha256, so one tarball is fetched once however many binaries it serves.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from hardway import localfs
from hardway.errors import HardwayError
from hardway.files import sha256_file
from hardway.inventory import BinarySource, Inventory

TARBALLS = (".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20


def cached_path(source: BinarySource, cache_dir: Path) -> Path:
    """Where a URL source lands once fetched (keyed by its sha256, so a new release never collides)."""
    assert source.sha256 is not None
    return cache_dir / source.sha256[:16] / source.name


def download_path(source: BinarySource, cache_dir: Path) -> Path:
    """Where a tarball is kept once downloaded: shared by every binary taken from it."""
    assert source.url is not None and source.sha256 is not None
    name = Path(urlsplit(source.url).path).name or "download"
    return cache_dir / source.sha256[:16] / f"download-{name}"


def is_tarball(source: BinarySource) -> bool:
    return source.url is not None and urlsplit(source.url).path.endswith(TARBALLS)


def resolve(inv: Inventory, name: str, cache_dir: Path) -> Path | None:
    """The local file for binary ``name``: its path, or its fetched URL; None if not fetched yet."""
    source = inv.binaries.get(name)
    if source is None:
        return None
    if source.path is not None:
        return source.path
    cached = cached_path(source, cache_dir)
    return cached if cached.is_file() else None


def check_sha256(source: BinarySource, actual: str, path: Path) -> None:
    """Refuse a local file whose sha256 (``actual``) is not the one the inventory pins, naming its line."""
    if source.sha256 and actual != source.sha256:
        where = source.sha256_where or f"binaries.{source.name}.sha256"
        raise HardwayError(f"{where}: {path} has sha256 {actual[:16]}…, not {source.sha256[:16]}…; replace the "
                           "file or correct the sha256")


def fetch(source: BinarySource, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Download a URL source, verify its sha256 and, for a tarball, take the member named like it."""
    if source.path is not None:
        if not source.path.is_file():
            raise HardwayError(f"binaries.{source.name}.path: {source.path} does not exist; fix the path")
        if source.sha256:
            check_sha256(source, sha256_file(source.path), source.path)
        return source.path
    assert source.url is not None and source.sha256 is not None
    target = cached_path(source, cache_dir)
    if target.is_file():
        return target
    localfs.private_dir(target.parent)
    if not is_tarball(source):
        _download(source, target, timeout)
        return target
    archive = download_path(source, cache_dir)
    if not archive.is_file():
        _download(source, archive, timeout)
    with localfs.write_stream(target, 0o755) as out:
        for block in _member(archive, source):
            out.write(block)
    return target


def fetch_all(inv: Inventory, names: tuple[str, ...] | list[str], cache_dir: Path) -> list[Path]:
    """Fetch every named binary the inventory has a source for (a shared tarball once)."""
    return [fetch(inv.binaries[n], cache_dir) for n in names if n in inv.binaries]


def _download(source: BinarySource, target: Path, timeout: float) -> None:
    """Stream ``source.url`` into ``target`` (0755), refusing it unless its sha256 is the pinned one."""
    assert source.url is not None and source.sha256 is not None
    digest = hashlib.sha256()

    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as resp, localfs.write_stream(target, 0o755) as out:
            while block := resp.read(CHUNK):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != source.sha256:  # raised inside: the download never lands
                raise HardwayError(f"binaries.{source.name}: {source.url} has sha256 {digest.hexdigest()}, the "
                                   f"inventory says {source.sha256}; refusing it")
    except OSError as exc:
        raise HardwayError(f"binaries.{source.name}: cannot download {source.url}: {exc}") from None


def _member(archive: Path, source: BinarySource) -> Iterator[bytes]:
    """The bytes of the archive member whose file name is the binary's (streamed)."""
    try:
        tar = tarfile.open(archive)  # noqa: SIM115 -- closed by the with below; open errors are reported first
    except (tarfile.TarError, OSError) as exc:
        raise HardwayError(f"binaries.{source.name}: {source.url} is not a readable tarball: {exc}") from None
    with tar:
        for member in tar:
            if member.isfile() and Path(member.name).name == source.name:
                extracted = tar.extractfile(member)
                assert extracted is not None
                while block := extracted.read(CHUNK):
                    yield block
                return
    raise HardwayError(f"binaries.{source.name}: {source.url} holds no file named {source.name!r}")
