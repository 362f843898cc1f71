"""A client of a lab's etcd from the jumpbox (the host's Debian etcdctl), for lab tests and bench/.

Its certificate is a member's own (client and server usage), taken from the etcd chapter's planned
files, so it is trusted by whatever CA the chapter makes the members trust. ``Writer`` writes
continuously through chosen members and records every acknowledged write, so a test can prove
none was lost and none failed while the cluster was changed underneath it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hardway.chapters import Context
from hardway.chapters.etcd import CHAPTER as ETCD
from hardway.chapters.etcd.files import CA, CERT, KEY
from hardway.inventory import Inventory, Node
from hardway.state import PkiState

ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
TXN_OPS = 128  # etcd's default --max-txn-ops


class Client:
    def __init__(self, inv: Inventory, state: PkiState, workdir: Path) -> None:
        self.inv = inv
        planned = {f.path: f for f in Context(inv, state).files(ETCD, inv.controllers[0])}
        workdir.mkdir(parents=True, exist_ok=True)
        self.files = {}
        for path, name in ((CA, "ca.crt"), (CERT, "client.crt"), (KEY, "client.key")):
            target = workdir / name
            target.write_bytes(planned[path].data())
            target.chmod(0o600)
            self.files[name] = target

    def argv(self, nodes: Sequence[Node], *args: str, timeout: str = "5s") -> list[str]:
        eps = ",".join(self.inv.etcd_client_url(n) for n in nodes)
        return ["etcdctl", f"--endpoints={eps}", f"--cacert={self.files['ca.crt']}",
                f"--cert={self.files['client.crt']}", f"--key={self.files['client.key']}", "--dial-timeout=3s",
                f"--command-timeout={timeout}", *args]

    def run(self, nodes: Sequence[Node], *args: str, stdin: str | None = None,
            timeout: str = "5s") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(nodes, *args, timeout=timeout), input=stdin, capture_output=True, text=True,
                              timeout=120, env=ENV)

    def put_many(self, nodes: Sequence[Node], items: dict[str, str]) -> None:
        """Many keys in transactions of 128 puts (one etcdctl process each)."""
        keys = sorted(items)
        for i in range(0, len(keys), TXN_OPS):
            ops = "".join(f"put {k} {items[k]}\n" for k in keys[i:i + TXN_OPS])
            done = self.run(nodes, "txn", stdin="\n" + ops + "\n\n", timeout="30s")
            assert done.returncode == 0 and done.stdout.startswith("SUCCESS"), done.stderr

    def get_prefix(self, nodes: Sequence[Node], prefix: str) -> dict[str, str]:
        done = self.run(nodes, "get", prefix, "--prefix", "-w", "json", timeout="60s")
        assert done.returncode == 0, done.stderr
        import base64

        kvs = json.loads(done.stdout).get("kvs") or []
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}

    def count(self, nodes: Sequence[Node], prefix: str = "") -> int:
        done = self.run(nodes, "get", prefix, "--prefix", "--keys-only", "--limit=1", "-w", "json")
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout).get("count", 0))


class Writer(threading.Thread):
    """Puts ``<prefix>/<n>`` through ``nodes`` one after another until stopped."""

    def __init__(self, client: Client, nodes: Sequence[Node], prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.nodes, self.prefix = client, list(nodes), prefix
        self.acked: dict[str, str] = {}
        self.failed: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            key, value = f"{self.prefix}/{n:06d}", f"v{n}-{time.monotonic_ns()}"
            done = self.client.run(self.nodes, "put", key, value, timeout="10s")
            if done.returncode == 0 and done.stdout.strip() == "OK":
                self.acked[key] = value
            else:
                self.failed.append(f"{key}: {(done.stderr or done.stdout).strip()[-200:]}")
            n += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
