"""`invoke kubeconfig.admin`: remote kubectl through the API endpoint (the tutorial's chapter 10)."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from .common import INVENTORY_HELP, PKI_DIR_HELP, load_inventory, pki_state, user_errors


@task(name="admin", auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "out": "where to write it (default: ~/.kube/config)",
    "force": "replace a different file there, keeping it as <out>.hardway-orig-<time>",
})
@user_errors
def kubeconfig_admin(c, inventory=None, pki_dir=None, out=None, force=False) -> None:
    """Write the admin kubeconfig (through the API endpoint, 0600) for kubectl on this machine."""
    from hardway import kubeconfig

    inv = load_inventory(inventory)
    target = Path(out).expanduser() if out else Path.home() / ".kube" / "config"
    written = kubeconfig.install_admin(inv, pki_state(inv, pki_dir), target, force=force)
    print(written)
    print(f"try: kubectl --kubeconfig {target} get --raw /readyz")


kubeconfig_ns = Collection("kubeconfig")
kubeconfig_ns.add_task(kubeconfig_admin, name="admin")
