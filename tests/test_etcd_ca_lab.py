"""A cluster whose etcd runs on the cluster CA (as hardway deployed it before etcd had a CA of its own)
moves to the etcd CA with `rotate-certs` while a client writes: every acknowledged write survives, and
afterwards a worker's certificate is refused by etcd. A lab of its own: 3 controllers."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hardway import rotate
from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd import files as etcd_files
from hardway.checks import FAIL
from hardway.remote import QUIET
from tests.test_bootstrap_etcd import run_on
from tests.test_etcd_trust import one_ca_state

pytestmark = pytest.mark.lab


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Writer(threading.Thread):
    """PUTs numbered keys through etcd's JSON gateway, failing over between members and between the old
    and the new client certificate (as a client moved along with the roll would); remembers what was
    acknowledged."""

    def __init__(self, endpoints: list[str], cas: Path, clients: list[tuple[Path, Path]]) -> None:
        super().__init__(daemon=True)
        self.endpoints, self.clients = endpoints, clients
        self.cas = cas
        self.acked: dict[str, str] = {}
        self.failed = 0
        self.stop = threading.Event()

    def context(self, client: tuple[Path, Path]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cas))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(client[0]), str(client[1]))
        return ctx

    def put(self, key: str, value: str) -> bool:
        body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
        for endpoint in self.endpoints:
            for client in self.clients:
                try:
                    req = urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST")
                    with urllib.request.urlopen(req, context=self.context(client), timeout=3) as resp:
                        if resp.status == 200 and "header" in json.loads(resp.read()):
                            return True
                except (OSError, ValueError, ssl.SSLError):
                    continue
        return False

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 20_000:
            key, value = f"/ca-roll/{i:05d}", f"v{i}"
            if self.put(key, value):
                self.acked[key] = value
            else:
                self.failed += 1
            i += 1


def read_back(endpoint: str, cas: Path, client: tuple[Path, Path]) -> dict[str, str]:
    ctx = ssl.create_default_context(cafile=str(cas))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(client[0]), str(client[1]))
    body = json.dumps({"key": b64("/ca-roll/"), "range_end": b64("/ca-roll0")}).encode()
    req = urllib.request.Request(f"{endpoint}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        kvs = json.loads(resp.read()).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}


def test_etcd_moves_to_its_own_ca_under_writes_and_nothing_acknowledged_is_lost(lab_factory, tmp_path,
                                                                               monkeypatch) -> None:
    the_lab = lab_factory(3, 0)
    inv = the_lab.inventory
    state = one_ca_state(inv, tmp_path / "pki")
    monkeypatch.setattr(etcd_files, "ETCD_CA_NAME", "ca")  # etcd as the one-CA hardway deployed it
    report = ETCD.apply(Context(inv, state, progress=QUIET))
    assert not [r for r in report.results if r.status == FAIL and r.check != "client-auth"]
    monkeypatch.undo()
    old_client = (tmp_path / "old-client.crt", tmp_path / "old-client.key")  # a client of the one-CA world
    old_client[0].write_bytes(state.cert("etcd-controller-0").read_bytes())
    old_client[1].write_bytes(state.key("etcd-controller-0").read_bytes())
    old_client[1].chmod(0o600)

    from hardway import jumpbox

    jumpbox.generate(inv, state)  # `invoke pki`: issues the etcd CA, reissues what it signs
    cas = tmp_path / "both.crt"
    cas.write_bytes(state.cert("ca").read_bytes() + state.cert("etcd-ca").read_bytes())
    new_client = (state.cert("apiserver-etcd-client"), state.key("apiserver-etcd-client"))
    endpoints = [inv.etcd_client_url(c) for c in inv.controllers]
    writer = Writer(endpoints, cas, [new_client, old_client])
    writer.start()
    try:
        time.sleep(1.0)
        said: list[str] = []
        rotated = rotate.rotate(inv, state, progress=QUIET.__class__(said.append))
        time.sleep(1.0)
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    etcd_restarts = [r for r in rotated.restarted if r[0] == "etcd"]
    assert len(etcd_restarts) == 9, rotated.restarted  # trust both, new member certs, drop the old CA
    assert len(writer.acked) > 100, (len(writer.acked), writer.failed)
    stored = read_back(endpoints[0], cas, new_client)
    lost = [k for k, v in writer.acked.items() if stored.get(k) != v]
    assert lost == [], f"{len(lost)} acknowledged writes lost of {len(writer.acked)}"
    print(f"\netcd CA roll: {len(writer.acked)} writes acknowledged, {writer.failed} failed, 0 lost")
    for c in inv.controllers:  # the old CA is no longer trusted
        assert run_on(inv, c, f"cat {etcd_files.CA}").stdout == state.cert("etcd-ca").read_text()
    assert not Writer(endpoints, cas, [old_client]).put("/ca-roll/old", "x"), "the old CA's client is refused"
    assert not Writer(endpoints, cas, [(state.cert("kube-proxy"), state.key("kube-proxy"))]).put("/x", "y"), \
        "a worker's certificate is refused"
    assert Writer(endpoints, cas, [new_client]).put("/ca-roll/new", "x")
    results = ETCD.verify(Context(inv, state, progress=QUIET))
    assert not [r for r in results if r.status == FAIL], [r for r in results if r.status == FAIL]
    auth = [r.detail for r in results if r.check == "client-auth"]
    assert "a client with a worker's certificate (kube-proxy, from the cluster CA) is refused" in auth
