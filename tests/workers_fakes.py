"""Fake workers and controllers for the workers, pod-routes and smoke chapters' unit tests: the
fact-level fake (tests/fakes.py) answering these chapters' facts from recorded outputs
(tests/data/facts/) and from the fake node's own disk and services."""

from __future__ import annotations

import json
from pathlib import Path

from hardway import inventory, jumpbox
from hardway.chapters.workers import files as wf
from hardway.chapters.workers import verify as wv
from hardway.facts import FactOutput
from hardway.state import PkiState
from tests.fakes import FakeCluster, FakeFile, FakeNode

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "facts"
LAB_CASES = {"swaps": "lab-none", "fstab": "debian-unconfigured", "sysctls": "lab-fixed", "br_netfilter": "lab-loaded",
             "resolv_conf": "lab-upstream", "resolved_upstream": "absent", "tools": "all-present",
             "cgroups": "lab-nspawn-v1"}


def recorded(fact: str, case: str) -> FactOutput:
    rc = DATA / fact / f"{case}.rc"
    return FactOutput((DATA / fact / f"{case}.txt").read_text(), int(rc.read_text()) if rc.exists() else 0)


def lab_like(tmp: Path, omit: tuple[str, ...] = ()) -> tuple[inventory.Inventory, PkiState]:
    """The sample inventory with small local files as the runtime's binaries (containerd 1.6 named
    in versions: the fake files do not run), kubelet and kube-proxy as stand-ins."""
    bins = tmp / "bin"
    bins.mkdir(exist_ok=True)
    lines = []
    for _, name, _, _ in wf.BINARIES:
        if name in ("kubelet", "kube-proxy", "crictl", *omit):
            continue
        (bins / name).write_bytes(f"#!/bin/sh\necho {name}\n".encode())
        lines.append(f"  {name}: {{path: {bins / name}}}")
    text = (ROOT / "inventory" / "sample.yaml").read_text().replace('containerd: "2.1.0"', 'containerd: "1.6.20"')
    text = text.replace("binaries:\n", "binaries:\n" + "\n".join(lines) + "\n")
    inv = inventory.parse(text, "sample.yaml", base=ROOT / "inventory")
    state = PkiState(tmp / "pki")
    jumpbox.generate(inv, state)
    return inv, state


def _active(n: FakeNode, unit: str) -> bool:
    svc = n.services.get(unit)
    return svc is not None and svc.active


def _cni(fact, n: FakeNode) -> str:
    out = [f"@@cni {p}\n{f.data.decode()}\n" for p, f in sorted(n.files.items())
           if p.startswith("/etc/cni/net.d/") and not p.endswith(".hardway-new")]
    bins = [p.rsplit("/", 1)[1] for p in n.files if p.startswith("/opt/cni/bin/")]
    return "".join(out) + "@@bin\n" + "".join(f"{b}\n" for b in sorted(bins))


def _text(path: str):
    return lambda fact, n: FactOutput(n.files[path].data.decode(), 0) if path in n.files else FactOutput("", 1)


def worker(node: FakeNode, **cases: str) -> None:
    """A worker answering like the recorded lab node (``cases``: fact name -> another recorded case)."""
    for fact, case in {**LAB_CASES, **cases}.items():
        node.facts[fact] = recorded(fact, case)
    node.facts.update({
        "containerd_version": lambda f, n: FactOutput("Client:\n  Version:  1.6.20~ds1\n\nServer:\n  Version:  "
                                                      "1.6.20~ds1\n", 0) if _active(n, "containerd")
        else FactOutput("ctr: failed to dial", 1),
        "kubelet_healthz": lambda f, n: FactOutput("ok", 0) if _active(n, "kubelet") else FactOutput("refused", 7),
        "kube_proxy_healthz": lambda f, n: FactOutput("{}", 0) if _active(n, "kube-proxy") else FactOutput("", 7),
        "cri_plugin": lambda f, n: FactOutput("ok", 0) if _active(n, "containerd") else FactOutput("", 1),
        "cni": _cni,
        "kubelet_config": _text(wf.KUBELET_CONFIG),
        "containerd_config": _text("/etc/containerd/config.toml"),
        "journal_lines": "", "coredns_logs": "",
    })


def controller(node: FakeNode, state: PkiState, probe: str = "standin-ok") -> None:
    client = "apiserver-kubelet-client"
    for path, src in ((wv.APISERVER_CA, state.cert("ca")), (wv.KUBELET_CLIENT_CERT, state.cert(client)),
                      (wv.KUBELET_CLIENT_KEY, state.key(client))):
        node.files[path] = FakeFile(src.read_bytes())
    node.facts.update({"kubelet_probe": recorded("kubelet_probe", probe), "journal_lines": ""})


def cluster_for(inv: inventory.Inventory, state: PkiState, **cases: str) -> FakeCluster:
    cluster = FakeCluster()
    for w in inv.workers:
        worker(cluster[w.name], **cases)
    for c in inv.controllers:
        controller(cluster[c.name], state)
    return cluster


def routes_json(routes: list[dict]) -> str:
    return json.dumps(routes) + "\n\n[]\n"
