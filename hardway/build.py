"""``build/<cluster>/<node>/``: every file a node receives, for reading and diffing (`invoke render`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hardway import localfs, plan
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.state import PkiState
from hardway.systemd import lint_units


def _write(path: Path, data: bytes, mode: int) -> None:
    localfs.private_dir(path.parent)
    localfs.write_atomic(path, data, mode)


def write_build(inv: Inventory, state: PkiState, out_dir: Path, node: str | None = None, *,
                cache_dir: Path | None = None) -> list[Path]:
    """Write every planned file of each node (or of ``node``) under ``out_dir/<node>/``.

    Each node directory is rebuilt from scratch in a sibling temp dir and swapped in, so files of
    an earlier render that the plan no longer holds disappear. Directories are 0700, secret files
    0600, others their planned mode. Binaries are listed in ``manifest.json`` (sha256, source) but
    not copied. Same inventory and same PKI give the same bytes. Units are linted with
    systemd-analyze in the staging dir: a rejected unit raises and the previous build stays.
    """
    names = [inv.node(node).name] if node else [n.name for n in inv.nodes]
    plans = {name: plan.node_files(inv, name, state, cache_dir=cache_dir) for name in names}
    out_dir = Path(out_dir)
    if not out_dir.exists():  # a directory the user chose and made keeps its own mode
        localfs.private_dir(out_dir)  # holds keys (node dirs below are 0700 in any case)
    written: list[Path] = []
    for name, files in plans.items():
        final = out_dir / name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))  # 0700
        try:
            entries = []
            paths: list[Path] = []
            for f in files:
                entry = f.manifest_entry()
                if f.source is not None:
                    entry["source"] = str(f.source)
                else:
                    target = f.path.lstrip("/")
                    _write(staging / target, f.data(), f.mode)
                    paths.append(final / target)
                entries.append(entry)
            entries.sort(key=lambda e: str(e["path"]))
            manifest = json.dumps(entries, indent=2, sort_keys=True).encode() + b"\n"
            _write(staging / "manifest.json", manifest, 0o644)
            paths.append(final / "manifest.json")
            problems = lint_units(sorted((staging / "etc/systemd/system").glob("*.service")))
            if problems:
                shown = "; ".join(p.replace(str(staging), str(final)) for p in problems[:3])
                raise HardwayError(f"render: systemd-analyze verify rejects {name}'s units ({shown}); "
                                   f"{final} was left as it was")
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out_dir))
                os.rename(final, old / name)
            os.rename(staging, final)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        written.extend(paths)
    return written
