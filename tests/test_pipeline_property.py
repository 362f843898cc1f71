"""The whole jumpbox pipeline on generated inventories: either output other tools accept, or one
HardwayError naming file, line and field. No other exception may escape.

Budget: ``EXAMPLES`` inventories (tests/strategies.py), each through load, PKI (ecdsa-p256, 1-3
nodes), kubeconfigs, encryption config, plan, render and systemd-analyze verify; about 20 s here.

Reproducing a failure: Hypothesis prints the falsifying inventory text (the drawn argument) and,
with ``print_blob=True``, a ``@reproduce_failure(...)`` line to paste above the test. Under CI
(``CI`` set) Hypothesis's built-in "ci" profile is loaded, which derandomizes: the examples are a
function of the test's name, so CI runs the same inventories every time and a CI failure
reproduces locally with ``CI=true python -m pytest tests/test_pipeline_property.py``. Without
``CI`` the run is random (new inventories each time) and a failure is also kept in
``.hypothesis/`` to be replayed first on the next run; the seed is printed if a failure does not
replay, as Hypothesis does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from hypothesis import HealthCheck, event, example, given, note, settings

from hardway import build, inventory, jumpbox, pki
from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.state import PkiState
from tests.strategies import BINARY_BYTES, BINARY_NAME, inventory_texts

SOURCE = "inv.yaml"
# CI-sized; HARDWAY_PROPERTY_EXAMPLES=2000 for a long local hunt.
EXAMPLES = int(os.environ.get("HARDWAY_PROPERTY_EXAMPLES", "100"))


def run_pipeline(text: str, workdir: Path) -> tuple[Inventory, PkiState, list[Path]]:
    """Inventory text → everything the jumpbox makes and renders (the one place naming the pipeline's
    modules: retarget here when they move)."""
    inv = inventory.parse(text, SOURCE, base=workdir)
    state = PkiState(workdir / "pki")
    jumpbox.generate(inv, state)
    written = build.write_build(inv, state, workdir / "build")  # plan + render + systemd-analyze verify
    return inv, state, written


# A HardwayError must name where: file:line, then a field path of the schema, or a YAML problem.
_SECTIONS = "cluster|api_endpoint|versions|pki|encryption|ssh|binaries|etcd|nodes"
_NAMES_A_FIELD = re.compile(
    rf"^{re.escape(SOURCE)}:\d+: (((?:{_SECTIONS})(?:[.\[][^ ]*)?|\(top level\)): \S"
    r"|YAML syntax error: \S|character U\+[0-9A-F]{4,6} is not allowed|the inventory is empty"
    r"|\S.*: unknown (field|binary|component|certificate family); )"  # the path is then the unknown key
)


def _check_outputs(inv: Inventory, state: PkiState, written: list[Path]) -> None:
    certs = sorted(state.root.glob("*.crt"))
    assert state.cert("ca") in certs and len(certs) >= 6, certs
    for cert in certs:
        proc = subprocess.run(["openssl", "x509", "-noout", "-in", str(cert)], capture_output=True, text=True)
        assert proc.returncode == 0, f"openssl cannot parse {cert.name}: {proc.stderr}"
    for ca in pki.CA_NAMES:  # each certificate against the CA that signs it
        signed = [str(state.cert(s.name)) for s in pki.catalogue(inv) if s.issuer == ca and s.name != ca]
        proc = subprocess.run(["openssl", "verify", "-CAfile", str(state.cert(ca)), *signed],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"openssl verify: {proc.stdout}{proc.stderr}"
    kubeconfigs = sorted((state.root / "kubeconfigs").glob("*.kubeconfig"))
    assert len(kubeconfigs) == 5 + len(inv.workers)
    for path in kubeconfigs:
        server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
        _check_url(server, path.name)
    units = [p for p in written if p.suffix == ".service"]
    assert units, "render wrote no unit"
    for unit in units:  # systemd-analyze verify passed inside write_build; the URLs in them must parse
        flags = [line for line in unit.read_text().splitlines() if not line.startswith("Documentation=")]
        for url in re.findall(r"https://[^\s\",]+", "\n".join(flags)):
            _check_url(url, unit.name)
    for manifest in (p for p in written if p.name == "manifest.json"):
        assert isinstance(json.loads(manifest.read_text()), list)
    for config in (p for p in written if p.suffix == ".yaml"):
        list(yaml.safe_load_all(config.read_text()))


def _check_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.hostname, f"{where}: {url}"
    assert parts.port is not None and 1 <= parts.port <= 65535, f"{where}: {url}"
    assert "%" not in url, f"{where}: {url} carries a zone index"
    ipaddress.ip_address(parts.hostname)  # hardway dials addresses, never names


@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(inventory_texts())
@example("cluster: {name: demo, service_cidr: 10.32.0.0/24, cluster_cidr: 10.200.0.0/16}\n"
         "nodes:\n  - {name: c0, address: 10.240.0.10, roles: [controller]}\n"
         "  - {name: w1, address: 10.240.0.11, roles: [worker], pod_cidr: 10.200.1.0/24}\n"
         f"binaries: {{etcd: {{path: {BINARY_NAME}}}}}\n")
def test_pipeline_accepts_or_names_the_field(text: str) -> None:
    note(f"inventory:\n{text}")
    with tempfile.TemporaryDirectory(prefix="hw-prop-") as tmp:
        workdir = Path(tmp)
        (workdir / BINARY_NAME).write_bytes(BINARY_BYTES)
        try:
            inv, state, written = run_pipeline(text, workdir)
        except HardwayError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 500, message
            assert _NAMES_A_FIELD.match(message), message
            assert "<unicode string>" not in message, message
            event(f"refused: {message.split(': ')[1].split('[')[0].split('.')[0]}")  # --hypothesis-show-statistics
            return
        _check_outputs(inv, state, written)
        event("accepted")
