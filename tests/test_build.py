"""hardway.build: build/<cluster>/<node>/ and its manifest (`invoke render`)."""


from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from hardway import inventory
from hardway.build import write_build
from hardway.errors import HardwayError
from hardway.files import File
from hardway.plan import node_files
from hardway.state import PkiState
from tests.test_plan import SAMPLE

# --------------------------------------------------------------------------------------------
# build/


def tree(root: Path) -> dict[str, tuple[bytes | None, int]]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*"))}


def test_render_is_deterministic(inv, state, build, tmp_path):
    out, _ = build
    again = tmp_path / "again"
    write_build(inv, state, again)
    assert tree(again) == tree(out)
    first = (out / "worker-0" / "manifest.json").read_bytes()
    write_build(inv, state, out, "worker-0")
    assert (out / "worker-0" / "manifest.json").read_bytes() == first
    assert tree(again) == tree(out)


def test_build_modes_and_manifest(inv, state, build):
    out, written = build
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for n in inv.nodes:
        node_dir = out / n.name
        manifest = json.loads((node_dir / "manifest.json").read_text())
        planned = node_files(inv, n.name, state)
        assert manifest == sorted((f.manifest_entry() for f in planned), key=lambda e: e["path"])
        for f in planned:
            target = node_dir / f.path.lstrip("/")
            assert target.read_bytes() == f.content
            assert stat.S_IMODE(target.stat().st_mode) == (0o600 if f.secret else f.mode)
        for d in [node_dir, *(p for p in node_dir.rglob("*") if p.is_dir())]:
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    key = out / "controller-0" / "etc" / "etcd" / "etcd.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out / "controller-0" / "manifest.json" in written


def test_binaries_in_manifest_not_copied(state, tmp_path):
    fake = tmp_path / "etcd-binary"
    fake.write_bytes(b"not really etcd")
    text = SAMPLE.read_text().replace("etcd: {path: ./bin/etcd}", f"etcd: {{path: {fake}}}")
    inv_b = inventory.parse(text, "b.yaml", base=SAMPLE.parent)
    out = tmp_path / "out"
    write_build(inv_b, state, out, "controller-0")
    entries = {e["path"]: e for e in json.loads((out / "controller-0" / "manifest.json").read_text())}
    etcd = entries["/usr/local/bin/etcd"]
    assert etcd["source"] == str(fake) and etcd["mode"] == "0755" and etcd["services"] == ["etcd"]
    assert etcd["sha256"] == hashlib.sha256(b"not really etcd").hexdigest()
    assert not (out / "controller-0" / "usr" / "local" / "bin" / "etcd").exists()
    # the stand-ins are generated programs, written like any other generated file
    assert (out / "controller-0" / "usr" / "local" / "bin" / "kube-apiserver").read_bytes().startswith(b"#!")
    assert "source" not in entries["/etc/etcd/etcd.key"]


def test_stale_files_are_removed_and_other_nodes_untouched(inv, state, tmp_path):
    out = tmp_path / "out"
    write_build(inv, state, out)
    stale = out / "worker-0" / "etc" / "old.conf"
    stale.write_text("left over")
    other = tree(out / "worker-1")
    write_build(inv, state, out, "worker-0")
    assert not stale.exists()
    assert tree(out / "worker-1") == other
    assert sorted(p.name for p in out.iterdir()) == sorted(n.name for n in inv.nodes)  # no temp dirs left


def test_failed_render_keeps_the_previous_build(inv, state, tmp_path):
    out = tmp_path / "out"
    write_build(inv, state, out, "worker-0")
    before = tree(out)
    with pytest.raises(HardwayError, match="run `invoke pki`"):
        write_build(inv, PkiState(tmp_path / "no-pki"), out, "worker-0")
    assert tree(out) == before


def test_a_unit_systemd_rejects_keeps_the_previous_build(inv, state, tmp_path, monkeypatch):
    """Fails at lint, after every file reached the staging dir: nothing of it may land or linger."""
    from hardway import plan

    out = tmp_path / "out"
    write_build(inv, state, out, "worker-0")
    before = tree(out)
    real = plan.node_files
    broken = File("/etc/systemd/system/broken.service", 0o644,
                  content=b"[Service]\nExecStart=/bin/true \\ \n  --dropped\n")  # space after the backslash
    monkeypatch.setattr(plan, "node_files", lambda *a, **kw: [*real(*a, **kw), broken])
    with pytest.raises(HardwayError, match=r"systemd-analyze verify rejects worker-0's units .* was left as it was"):
        write_build(inv, state, out, "worker-0")
    assert tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["worker-0"], "no staging dir left behind"
