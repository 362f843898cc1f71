"""rotate-certs on the lab: change the etcd certs' SANs while a client writes; nothing acknowledged is lost."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from hardway import inventory, rotate
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import CERT
from hardway.checks import FAIL
from hardway.remote import Progress
from tests.test_bootstrap_etcd import host_etcdctl, run_on

pytestmark = pytest.mark.lab
QUIET = Progress(sink=lambda _line: None)
EXTRA_SAN = "etcd.rotated.lab"


class Writer(threading.Thread):
    """Puts numbered keys through all endpoints until stopped; remembers which were acknowledged."""

    def __init__(self, inv, state) -> None:
        super().__init__(daemon=True)
        self.inv, self.state = inv, state
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.ack_times: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 5000:  # bounded, whatever happens
            key = f"/rotation/{i:05d}"
            try:
                proc = host_etcdctl(self.inv, self.state, self.inv.controllers, "put", key, str(i))
                ok = proc.returncode == 0 and proc.stdout.strip() == "OK"
            except subprocess.TimeoutExpired:
                ok = False
            (self.acked if ok else self.failed).append(key)
            if ok:
                self.ack_times.append(time.monotonic())
            i += 1


def test_rotating_etcd_sans_under_writes_keeps_quorum_and_every_acknowledged_write(lab, lab_pki,
                                                                                   tmp_path: Path) -> None:
    inv, state = lab.inventory, lab_pki
    ETCD.apply(Context(inv, state, progress=QUIET))  # converge first (a no-op after the bootstrap tests)
    text = lab.inventory_path.read_text()
    assert "pki:" not in text
    changed = tmp_path / "inventory.yaml"
    changed.write_text(text + f"\npki:\n  extra_sans:\n    etcd: [{EXTRA_SAN}]\n")
    new_inv = inventory.load(changed)

    dry = rotate.plan_rotation(new_inv, state, progress=QUIET)
    assert {o.name for o in dry.changed_outcomes} == {f"etcd-{n.name}" for n in inv.controllers}

    writer = Writer(inv, state)
    writer.start()
    time.sleep(2)
    started = time.monotonic()
    report = rotate.rotate(new_inv, state, progress=QUIET)
    ended = time.monotonic()
    time.sleep(2)
    writer.stop.set()
    writer.join(timeout=60)

    assert report.restarted == [("etcd", n.name) for n in inv.controllers]  # one member at a time
    written = {(node, p) for node, paths in report.written.items() for p in paths}
    assert written == dry.file_set() == {(n.name, CERT) for n in inv.controllers}

    # every acknowledged write is there, read through the cluster after the rotation
    got = host_etcdctl(inv, state, inv.controllers, "get", "/rotation/", "--prefix", "--keys-only")
    present = {line for line in got.stdout.splitlines() if line}
    missing = [k for k in writer.acked if k not in present]
    print(f"\nwrites: {len(writer.acked)} acknowledged, {len(writer.failed)} failed, {len(missing)} lost; "
          f"rotation took {ended - started:.1f}s")
    assert len(writer.acked) > 20
    assert missing == []
    # quorum was never lost: acknowledged writes kept coming during the whole rotation
    during = [t for t in writer.ack_times if started <= t <= ended]
    gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
    assert max(gaps) < 8.0, f"no write was acknowledged for {max(gaps):.1f}s: quorum lost?"

    for node in inv.controllers:
        pem = run_on(inv, node, f"cat {CERT}").stdout.encode()
        sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert EXTRA_SAN in sans.get_values_for_type(x509.DNSName), node.name
    assert not [r for r in ETCD.verify(Context(new_inv, state, progress=QUIET)) if r.status == FAIL]
