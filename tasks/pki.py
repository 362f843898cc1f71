"""`invoke pki` and `invoke pki.check`: certificates, kubeconfigs and the encryption config on the jumpbox."""

from __future__ import annotations

import sys

from invoke import Collection, Exit, task

from hardway.errors import HardwayError

from .common import INVENTORY_HELP, MAX_DAYS, PKI_DIR_HELP, digits, load_inventory, pki_state, user_errors

PKI_HELP = {
    "inventory": INVENTORY_HELP,
    "pki-dir": PKI_DIR_HELP,
    "renew-within-days": "reissue certificates expiring within N days (default: the inventory's "
                         "pki.renew_within_days)",
}


def _renew_within(inv, days: str | None):  # -> datetime.timedelta
    from datetime import timedelta

    if days is None:
        return timedelta(days=inv.renew_within_days)
    if not digits(str(days)) or int(days) > MAX_DAYS:
        raise HardwayError(f"--renew-within-days: {days!r} is not a whole number of days from 0 to {MAX_DAYS}")
    return timedelta(days=int(days))


@task(auto_shortflags=False, help={
    **PKI_HELP,
    "rotate-ca": "replace the CA itself; every certificate is then reissued and must be redistributed "
                 "to every node",
})
@user_errors
def pki_generate(c, inventory=None, pki_dir=None, rotate_ca=False, renew_within_days=None) -> None:
    """Issue/keep certificates, then write kubeconfigs and the encryption config (idempotent)."""
    from hardway import jumpbox
    from hardway import pki as pki_lib

    inv = load_inventory(inventory)
    state = pki_state(inv, pki_dir)
    if rotate_ca:
        print("warning: --rotate-ca issues a new CA: every certificate and kubeconfig is reissued and must "
              "be redistributed to every node (the old ones stop being trusted)", file=sys.stderr)
    outcomes = jumpbox.generate(inv, state, rotate_ca=rotate_ca, renew_within=_renew_within(inv, renew_within_days))
    print(pki_lib.format_outcomes(outcomes))
    print(f"PKI state: {state.root}")


@task(auto_shortflags=False, help=PKI_HELP)
@user_errors
def pki_check(c, inventory=None, pki_dir=None, renew_within_days=None) -> None:
    """Table of every certificate's expiry and drift; exit 1 if any is missing, drifted or expiring."""
    from hardway import pki as pki_lib

    inv = load_inventory(inventory)
    statuses = pki_lib.check(inv, pki_state(inv, pki_dir), renew_within=_renew_within(inv, renew_within_days))
    print(pki_lib.format_check_table(statuses))
    if pki_lib.has_problems(statuses):
        raise Exit("pki.check: some certificates are missing, drifted or expiring; run invoke pki", code=1)


pki = Collection("pki")
pki.add_task(pki_generate, name="generate", default=True)
pki.add_task(pki_check, name="check")
