"""The one way hardway writes a file on the jumpbox: whole or not at all, fsynced, mode enforced.

- ``write_atomic``: a temp file next to the target, created with its final mode (O_EXCL, so a
  key is never readable by others, not even for a moment), fsynced, renamed over the target, and
  the directory fsynced so the rename survives a crash. On any error the target is untouched and
  the temp file removed.
- ``ensure_file``: the same, but only when the bytes differ; a matching file whose mode drifted
  is chmod-ed in place. Says what it did, so callers can report "kept" or "rewritten".
- ``write_stream``: ``write_atomic`` for data that arrives in pieces (a snapshot from a node).
- ``private_dir``: a directory and its missing parents, 0700 (``mkdir(parents=True)`` leaves
  parents at the umask's mode).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import BinaryIO

SECRET_MODE = 0o600


class Change(Enum):
    """What ``ensure_file`` did."""

    WRITTEN = "written"  # there was no file
    REWRITTEN = "rewritten"  # the bytes differed
    MODE_FIXED = "mode fixed"  # same bytes, the mode was wrong
    KEPT = "kept"  # same bytes, same mode: not touched

    @property
    def changed(self) -> bool:
        return self is not Change.KEPT


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def write_stream(path: Path, mode: int) -> Iterator[BinaryIO]:
    """``write_atomic`` for data that arrives in pieces (a snapshot): write into the yielded file; on a
    clean exit it is fsynced and renamed over ``path``, on any error (Ctrl-C too) it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode & 0o777)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``) atomically and durably."""
    with write_stream(path, mode) as fh:
        fh.write(data)


def read_or_none(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def ensure_file(path: Path, data: bytes, mode: int) -> Change:
    """Make ``path`` hold ``data`` with ``mode``; touch it only if something differs."""
    path = Path(path)
    have = read_or_none(path)
    if have is None:
        write_atomic(path, data, mode)
        return Change.WRITTEN
    if have != data:
        write_atomic(path, data, mode)
        return Change.REWRITTEN
    return Change.MODE_FIXED if fix_mode(path, mode) else Change.KEPT


def fix_mode(path: Path, mode: int) -> str | None:
    """chmod ``path`` to ``mode`` if it differs (content untouched); say what changed."""
    have = Path(path).stat().st_mode & 0o7777
    if have == mode:
        return None
    os.chmod(path, mode)
    return f"mode {have:04o} → {mode:04o}"


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents 0700; tighten ``path`` itself if it is looser."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
        os.chmod(d, 0o700)  # mkdir's mode passes through the umask
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
