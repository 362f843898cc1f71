"""Where the binaries hardway distributes come from: a local file, or a URL checked by sha256."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

from hardway import localfs
from hardway.errors import HardwayError
from hardway.files import sha256_file
from hardway.inventory import BinarySource, Inventory


def cached_path(source: BinarySource, cache_dir: Path) -> Path:
    """Where a URL source lands once fetched (keyed by its sha256, so a new release never collides)."""
    assert source.sha256 is not None
    return cache_dir / source.sha256[:16] / source.name


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
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as resp:
            payload = resp.read()
    except OSError as exc:
        raise HardwayError(f"binaries.{source.name}: cannot download {source.url}: {exc}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != source.sha256:
        raise HardwayError(f"binaries.{source.name}: {source.url} has sha256 {digest}, the inventory says "
                           f"{source.sha256}; refusing it")
    if source.url.endswith((".tar.gz", ".tgz", ".tar")):
        payload = _member(payload, source)
    localfs.private_dir(target.parent)
    localfs.write_atomic(target, payload, 0o755)
    return target


def _member(archive: bytes, source: BinarySource) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and Path(member.name).name == source.name:
                extracted = tar.extractfile(member)
                assert extracted is not None
                return extracted.read()
    raise HardwayError(f"binaries.{source.name}: {source.url} holds no file named {source.name!r}")
