"""A file a node should receive: the unit of planning, rendering and pushing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hardway.localfs import SECRET_MODE

STAMP_MIN_BYTES = 1 << 20
STAMP_EPOCH = 1_000_000_000  # 2001-09-09: stamps fall in the following 194 days


def sha256_file(path: Path) -> str:
    """The file's sha256; remembered per (inode, size, mtime), since every node's plan hashes the
    same binaries."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


_HASHES: dict[tuple[str, int, int, int], str] = {}


@dataclass(frozen=True)
class File:
    """Target ``path`` on the node, with its bytes (``content``) or a local ``source`` for big binaries.

    ``services`` are the units to restart when this file changes; ``secret`` files are never
    printed or logged and are 0600 wherever they land: the rule is enforced here, once, so no
    planner, build dir or push can get it wrong.
    """

    path: str
    mode: int
    content: bytes | None = field(default=None, repr=False)  # may be a key: never in a repr or log
    source: Path | None = None
    owner: str = "root"
    group: str = "root"
    services: tuple[str, ...] = ()
    secret: bool = False
    chapter: str = ""

    def __post_init__(self) -> None:
        if (self.content is None) == (self.source is None):
            raise ValueError(f"{self.path}: give exactly one of content or source")
        if not self.path.startswith("/"):
            raise ValueError(f"{self.path}: target path must be absolute")
        if self.secret:
            object.__setattr__(self, "mode", SECRET_MODE)

    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        assert self.source is not None
        return self.source.read_bytes()

    @cached_property
    def sha256(self) -> str:
        if self.content is not None:
            return hashlib.sha256(self.content).hexdigest()
        assert self.source is not None
        return sha256_file(self.source)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.source.stat().st_size  # type: ignore[union-attr]

    @property
    def stamp(self) -> int | None:
        """The mtime hardway gives this file on a node, for a file big enough that reading it back
        costs (a binary): derived from its sha256, so an untouched file is known by size and mtime
        alone, like a reproducible build's fixed timestamps. None: always compared by hash."""
        if self.size < STAMP_MIN_BYTES:
            return None
        return STAMP_EPOCH + int(self.sha256[:6], 16)

    def manifest_entry(self) -> dict[str, object]:
        return {
            "path": self.path,
            "mode": f"{self.mode:04o}",
            "owner": f"{self.owner}:{self.group}",
            "sha256": self.sha256,
            "services": list(self.services),
            "chapter": self.chapter,
        }


def stamps(files: Iterable[File]) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, size, mtime) of the big files hardway stamps (see File.stamp): what
    facts.file_hashes may trust without reading them."""
    return {f.path: (f.sha256, f.size, stamp) for f in files if (stamp := f.stamp) is not None}
