"""The Planner: what a chapter uses to say which files one node receives (pure, no I/O on nodes).

It reads the PKI state files and resolves binaries; a missing PKI file is collected, not raised,
so one error can name them all (see hardway.plan.node_files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hardway import binaries
from hardway.errors import HardwayError
from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.paths import unit_file
from hardway.pki.keys import read_cert, read_key
from hardway.state import PkiState
from hardway.templates import render


@dataclass
class Planner:
    inv: Inventory
    node: Node
    state: PkiState
    cache_dir: Path | None
    chapter: str = ""
    files: list[File] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self.missing.append(path)
            return None

    def pki(self, target: str, source: Path, services: Iterable[str], secret: bool = False) -> None:
        """A file from the PKI state (a cert, key, kubeconfig or the encryption config)."""
        data = self._read(source)
        if data is None:
            return
        # A certificate or key damaged on disk is never shipped: `invoke pki` reissues it (or, for
        # the CA, says how to restore it).
        readable = {".crt": read_cert, ".key": read_key}.get(source.suffix)
        if readable is not None and readable(source) is None:
            self.damaged.append(source)
        self.add(target, data, services, secret=secret)

    def add(self, target: str, data: bytes | str, services: Iterable[str], secret: bool = False,
            mode: int = 0o644) -> None:
        content = data.encode() if isinstance(data, str) else data
        self.files.append(File(path=target, mode=mode, content=content, services=tuple(services), secret=secret,
                               chapter=self.chapter))

    def template(self, target: str, template: str, services: Iterable[str], **context: object) -> None:
        self.add(target, render(template, **context), services)

    def unit(self, name: str, argv: list[str]) -> None:
        self.template(unit_file(name), f"units/{name}.service.j2", (name,), argv=argv, node=self.node, inv=self.inv)

    def binary(self, directory: str, name: str, services: Iterable[str]) -> None:
        """Add ``name`` if its source resolves to a local file; else leave it out (preflight's job)."""
        if self.cache_dir is not None:
            source = binaries.resolve(self.inv, name, self.cache_dir)
        else:  # no cache to look in: only local files count
            entry = self.inv.binaries.get(name)
            source = entry.path if entry is not None else None
        if source is not None and source.is_file():
            f = File(path=f"{directory}/{name}", mode=0o755, source=source, services=tuple(services),
                     chapter=self.chapter)
            entry = self.inv.binaries.get(name)
            if entry is not None and entry.path is not None:  # a URL source was checked when fetched
                binaries.check_sha256(entry, f.sha256, source)
            self.files.append(f)


class _Planned(Protocol):
    name: str

    def plan_files(self, p: Planner) -> None: ...


def files_for(inv: Inventory, node: Node, state: PkiState, chapters: Sequence[_Planned],
              cache_dir: Path | None = None) -> list[File]:
    """Everything ``chapters`` put on ``node``, in their order.

    Binaries are included when their source resolves to a local file (a fetched URL source is
    looked up in ``cache_dir``; without one only ``path`` sources count), else left out.
    Raises HardwayError naming every missing PKI file ("... missing: run `invoke pki`").
    """
    p = Planner(inv, node, state, cache_dir)
    for chapter in chapters:
        p.chapter = chapter.name
        chapter.plan_files(p)
    if p.missing:
        if not state.root.is_dir():
            raise HardwayError(f"PKI state {state.root} missing: run `invoke pki` (or pass --pki-dir)")
        names = [_relative(m, state.root) for m in dict.fromkeys(p.missing)]
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        raise HardwayError(f"{node.name}: PKI files in {state.root} missing: {', '.join(names[:5])}{more}: "
                           "run `invoke pki`")
    if p.damaged:
        names = [_relative(m, state.root) for m in dict.fromkeys(p.damaged)]
        raise HardwayError(f"{node.name}: PKI files in {state.root} are damaged (not a whole PEM certificate or "
                           f"key): {', '.join(names)}: run `invoke pki`")
    seen: set[str] = set()
    for f in p.files:
        if f.path in seen:
            raise HardwayError(f"{node.name}: {f.path} planned twice")  # a planning bug, never user input
        seen.add(f.path)
    return p.files


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
