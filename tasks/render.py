"""`invoke render`: every file each node receives, written under build/ for reading."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from .common import CACHE_DIR, INVENTORY_HELP, PKI_DIR_HELP, ROOT, load_inventory, pki_state, user_errors


@task(name="render", auto_shortflags=False, help={
    "node": "render only this node (default: every node)",
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "out": "output directory (default: build/<cluster name>)",
})
@user_errors
def render_build(c, node=None, inventory=None, pki_dir=None, out=None) -> None:
    """Write every file each node receives to build/<cluster>/<node>/ plus manifest.json; lint the units."""
    from hardway import build

    inv = load_inventory(inventory)
    out_dir = Path(out) if out else ROOT / "build" / inv.cluster_name
    written = build.write_build(inv, pki_state(inv, pki_dir), out_dir, node, cache_dir=CACHE_DIR)
    for name in [node] if node else [n.name for n in inv.nodes]:
        node_dir = out_dir / name
        files = [p for p in written if node_dir in p.parents and p.name != "manifest.json"]
        size = sum(p.stat().st_size for p in files)
        print(f"{name}: {len(files)} files, {size} bytes, manifest {node_dir / 'manifest.json'}")
    units = [p for p in written if p.suffix == ".service" and p.parent.match("etc/systemd/system")]
    print(f"{len(units)} units pass systemd-analyze verify")
