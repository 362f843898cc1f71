"""`invoke rotate-encryption-key`: a new key (or provider) for Secrets at rest, step by step, resumable."""

from __future__ import annotations

from invoke import task

from .common import INVENTORY_HELP, PKI_DIR_HELP, connected, load_inventory, pki_state, seconds, user_errors


@task(name="rotate-encryption-key", auto_shortflags=False, help={
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "dry-run": "print the steps left (from what every controller runs) and change nothing",
    "another": "begin a new rotation although the last one finished (a fresh key of the same provider)",
    "timeout": "seconds to wait for each restarted apiserver (default 90)",
})
@user_errors
def rotate_encryption_key(c, inventory=None, pki_dir=None, dry_run=False, another=False, timeout=None) -> None:
    """Add a new key, roll the apiservers, make it first, roll, rewrite every Secret, drop the old key, roll.

    A changed encryption.provider in the inventory goes the same way. Re-run after an interruption: it
    resumes at the step the controllers' configs show."""
    from hardway import encryption_rotation

    wait = seconds(timeout, "--timeout", 90.0)
    inv = load_inventory(inventory)
    state = pki_state(inv, pki_dir)
    resume = "invoke rotate-encryption-key" + (f" --inventory {inv.path}" if inventory else "") + \
        (f" --pki-dir {pki_dir}" if pki_dir else "")
    with connected(inv, state, timeout=wait) as ctx:
        text, _ = encryption_rotation.rotate(ctx, another=another, resume=resume, dry_run=dry_run,
                                             before=lambda proc: print(proc.describe()))
    if dry_run or text.startswith("nothing to do"):
        print(text)  # else the steps were shown before they ran, and each one as it ran
    if dry_run and not text.startswith("nothing to do"):
        print("dry run: nothing was changed")
