"""Benchmark: a lab with etcd up to a verified control plane, hardway vs the hand way, in one run.

    python bench/bootstrap_control_plane.py [--rounds N]

Each round boots two fresh labs (3 controllers + the load balancer lb-0; not timed) and times:
- hardway on the first: `bootstrap-etcd` (the yardstick: "<= 1.5x the etcd bootstrap of the same run"),
  then `bootstrap-control-plane` as a library call (preflight, parallel push of the stand-ins, kubectl
  and every file, concurrent start, readiness waits, HAProxy, the endpoint's /readyz, RBAC step, full
  verify), with where the time went; then the idempotent re-run (library, fresh connections) and the
  same as the CLI (`invoke bootstrap-control-plane`, a new process);
- the hand way on the second (etcd bootstrapped by hardway first, not timed): the same rendered files
  pushed one node after another, one ssh/scp connection per step (mkdir, binaries, certificates and
  configs, units, daemon-reload, enable, start), as the tutorial does, then the tutorial's checks:
  /readyz on every apiserver (curl on the node) and through the load balancer.
Prints the figures and the ratios side by side, and the machine's load while it ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cli, ssh_options  # noqa: E402
from hardway import jumpbox, lab, remote  # noqa: E402
from hardway.chapters import Context  # noqa: E402
from hardway.chapters.control_plane import CHAPTER as CP  # noqa: E402
from hardway.chapters.etcd import CHAPTER as ETCD  # noqa: E402
from hardway.plan import chapter_files  # noqa: E402
from hardway.state import PkiState  # noqa: E402


def fresh_lab(tag: str) -> lab.Lab:
    name = f"bc{tag}{os.getpid() % 1000}"
    lab.down(name, report=lambda _m: None)
    return lab.up(name, 3, 0, str(lab.free_subnet(hash(name) & 0xFFFF)), loadbalancers=1, report=lambda _m: None)


def make_pki(the_lab: lab.Lab, root: Path) -> PkiState:
    state = PkiState(root / the_lab.name)
    jumpbox.generate(the_lab.inventory, state)
    return state


def library_apply(chapter, the_lab: lab.Lab, state: PkiState):  # -> (seconds, ApplyReport)
    t0 = time.monotonic()
    with remote.Pool() as pool:
        report = chapter.apply(Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET))
    assert not [r for r in report.results if r.status == "fail"], f"{chapter.name} did not verify"
    return time.monotonic() - t0, report



def hand_way(the_lab: lab.Lab, state: PkiState, workdir: Path) -> float:
    """The tutorial's way with the same files: per node, one connection per step, one node after another."""
    inv = the_lab.inventory
    ssh_opts = ssh_options(inv)
    t0 = time.monotonic()
    for node in (*inv.controllers, *inv.loadbalancers):
        files = chapter_files(inv, node, state, "control-plane")
        staged = workdir / node.name
        by_dir: dict[str, list[str]] = {}
        for f in files:
            directory, name = f.path.rsplit("/", 1)
            local = staged / directory.strip("/").replace("/", "__") / name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(f.data())
            local.chmod(f.mode)  # scp keeps the source mode (binaries need +x, keys 0600)
            by_dir.setdefault(directory, []).append(str(local))
        host = f"root@{node.address}"

        def ssh(cmd: str, host: str = host) -> None:
            subprocess.run(["ssh", *ssh_opts, host, cmd], check=True, capture_output=True, timeout=60)

        ssh("mkdir -p " + " ".join(sorted(by_dir)))
        for directory, local_files in sorted(by_dir.items()):  # one scp per target directory
            subprocess.run(["scp", "-q", *ssh_opts, *local_files, f"{host}:{directory}/"], check=True,
                           capture_output=True, timeout=120)
        ssh("systemctl daemon-reload")
        units = " ".join(CP.node_units(node))
        ssh(f"systemctl enable {units}")
        ssh(f"systemctl start {units}")
    admin = f"--cacert {state.cert('ca')} --cert {state.cert('admin')} --key {state.key('admin')}"
    # the tutorial's checks from the jumpbox, until each answers: every apiserver, then the load balancer
    targets = [f"https://{c.address}:6443/readyz" for c in inv.controllers]
    targets.append(f"https://{inv.api_endpoint.address}:{inv.api_endpoint.port}/readyz")
    for url in targets:
        for _ in range(240):
            if subprocess.run(f"curl -s --max-time 3 {admin} {url}", shell=True, capture_output=True, text=True,
                              timeout=30).stdout.strip() == "ok":
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"baseline: {url} never answered")
    return time.monotonic() - t0


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("the hand way needs curl on this host")
    rows: dict[str, list[float]] = {}
    loads: list[str] = [load()]

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            a = fresh_lab(f"h{i}")
            try:
                state = make_pki(a, Path(tmp))
                seconds, _ = library_apply(ETCD, a, state)
                add("etcd", seconds)
                seconds, report = library_apply(CP, a, state)
                add("fresh", seconds)
                add("mb", report.bytes_sent / 1e6)
                for phase, t in report.phases.items():
                    add(f"phase:{phase}", t)
                loads.append(load())
                seconds, again = library_apply(CP, a, state)
                assert not any(again.written.values()) and not again.restarted and not again.started
                add("rerun", seconds)
                for phase, t in again.phases.items():
                    add(f"rerun:{phase}", t)
                add("rerun-cli", cli(a, state, "bootstrap-control-plane")[0])
            finally:
                lab.down(a.name, report=lambda _m: None)
            b = fresh_lab(f"b{i}")
            try:
                state = make_pki(b, Path(tmp))
                library_apply(ETCD, b, state)
                add("hand", hand_way(b, state, Path(tmp) / f"stage{i}"))
                loads.append(load())
            finally:
                lab.down(b.name, report=lambda _m: None)
    med = {k: statistics.median(v) for k, v in rows.items()}

    def phases(prefix: str) -> str:
        return "  ".join(f"{k.split(':', 1)[1]} {v:.2f}" for k, v in med.items() if k.startswith(prefix))

    print(f"lab with etcd up -> verified control plane, 3 controllers + HAProxy ({args.rounds} round(s), median "
          f"seconds; load 1/5 min at start, after each: {', '.join(loads)} on {os.cpu_count()} cores)")
    print(f"  {'hardway bootstrap-etcd (the yardstick)':56}{med['etcd']:>8.2f}")
    print(f"  {'hardway bootstrap-control-plane (+verify)':56}{med['fresh']:>8.2f}")
    print(f"  {'  ratio to bootstrap-etcd (target <= 1.5)':56}{med['fresh'] / med['etcd']:>8.2f}x")
    print(f"  {'  where it went':56}{phases('phase:')}")
    print(f"  {'  sent to the nodes':56}{med['mb']:>8.1f} MB")
    print(f"  {'hand way (scp/ssh per step, one node after another)':56}{med['hand']:>8.2f}")
    print(f"  {'  ratio hand way / hardway (target >= 3)':56}{med['hand'] / med['fresh']:>8.2f}x")
    print(f"  {'hardway idempotent re-run, library (target <= 1.0)':56}{med['rerun']:>8.2f}")
    print(f"  {'  where it went':56}{phases('rerun:')}")
    print(f"  {'hardway idempotent re-run, CLI (a new process)':56}{med['rerun-cli']:>8.2f}")


if __name__ == "__main__":
    main()
