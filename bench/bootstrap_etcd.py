"""Benchmark: a fresh lab to a verified 3-member etcd, hardway vs the tutorial's hand way.

    python bench/bootstrap_etcd.py [--rounds N]

Each round boots a fresh 3-controller lab (not timed), then times:
- hardway: `etcd.bootstrap` (preflight incl. an fdatasync probe, parallel push, concurrent start,
  health wait, full verify);
- baseline: the same rendered files pushed the hand way — one node after another, one ssh/scp
  connection per step (mkdir, copy binaries, certs and unit, daemon-reload, enable, start) — then
  `etcdctl endpoint health` for every member. Its start uses --no-block: a blocking `systemctl
  start` of a Type=notify member would hang waiting for a quorum that the later nodes provide.
Then, on the hardway lab, the idempotent re-run and `verify` alone. Prints a table with ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardway import jumpbox, lab, plan
from hardway.chapters import etcd
from hardway.remote import Progress
from hardway.state import PkiState

QUIET = Progress(sink=lambda _line: None)


def fresh_lab(tag: str) -> lab.Lab:
    name = f"be{tag}"
    lab.down(name, report=lambda _m: None)
    return lab.up(name, 3, 0, str(lab.free_subnet(hash(name) & 0xFFFF)), report=lambda _m: None)


def make_pki(the_lab: lab.Lab, root: Path) -> PkiState:
    state = PkiState(root / the_lab.name)
    jumpbox.generate(the_lab.inventory, state)
    return state


def hand_way(the_lab: lab.Lab, state: PkiState, workdir: Path) -> float:
    inv = the_lab.inventory
    ssh_opts = ["-i", str(inv.ssh.key), "-o", f"UserKnownHostsFile={inv.ssh.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    t0 = time.monotonic()
    for node in inv.controllers:
        files = plan.chapter_files(inv, node, state, "etcd")
        staged = workdir / node.name
        staged.mkdir(parents=True, exist_ok=True)
        for f in files:
            (staged / Path(f.path).name).write_bytes(f.data())
            (staged / Path(f.path).name).chmod(f.mode)  # scp keeps the source mode (binaries need +x)
        host = f"root@{node.address}"

        def ssh(cmd: str, host: str = host) -> None:
            subprocess.run(["ssh", *ssh_opts, host, cmd], check=True, capture_output=True, timeout=60)

        def scp(names: list[str], dest: str, staged: Path = staged, host: str = host) -> None:
            subprocess.run(["scp", "-q", *ssh_opts, *[str(staged / n) for n in names], f"{host}:{dest}"],
                           check=True, capture_output=True, timeout=60)

        ssh("mkdir -p /etc/etcd /var/lib/etcd && chmod 700 /var/lib/etcd")
        scp(["etcd", "etcdctl"], "/usr/local/bin/")
        scp(["ca.crt", "etcd.crt", "etcd.key"], "/etc/etcd/")
        ssh("chmod 600 /etc/etcd/etcd.key")
        scp(["etcd.service"], "/etc/systemd/system/")
        ssh("systemctl daemon-reload")
        ssh("systemctl enable etcd")
        ssh("systemctl start --no-block etcd")
    for node in inv.controllers:  # the tutorial's check, per member, until it answers
        for _ in range(120):
            probe = subprocess.run(["ssh", *ssh_opts, f"root@{node.address}", etcd.ctl(inv, node, "endpoint health")],
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"baseline: {node.name} never became healthy")
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"hardway": [], "baseline": [], "rerun": [], "verify": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            a = fresh_lab(f"h{i}")
            try:
                state = make_pki(a, Path(tmp))
                t0 = time.monotonic()
                report = etcd.bootstrap(a.inventory, state, progress=QUIET)
                rows["hardway"].append(time.monotonic() - t0)
                assert not [r for r in report.results if r.status == "fail"], "hardway bootstrap did not verify"
                t0 = time.monotonic()
                again = etcd.bootstrap(a.inventory, state, progress=QUIET)
                rows["rerun"].append(time.monotonic() - t0)
                assert not any(again.written.values()) and not again.restarted
                t0 = time.monotonic()
                etcd.verify(a.inventory, state)
                rows["verify"].append(time.monotonic() - t0)
            finally:
                lab.down(a.name, report=lambda _m: None)
            b = fresh_lab(f"b{i}")
            try:
                rows["baseline"].append(hand_way(b, make_pki(b, Path(tmp)), Path(tmp) / f"stage{i}"))
            finally:
                lab.down(b.name, report=lambda _m: None)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"fresh 3-controller lab -> healthy etcd ({args.rounds} round(s), median seconds)")
    print(f"{'':34}{'seconds':>9}")
    print(f"{'hand way (scp/ssh per step, serial)':34}{med['baseline']:>9.2f}")
    print(f"{'hardway bootstrap-etcd (+verify)':34}{med['hardway']:>9.2f}")
    print(f"{'ratio hand way / hardway':34}{med['baseline'] / med['hardway']:>9.2f}x")
    print(f"{'hardway idempotent re-run':34}{med['rerun']:>9.2f}")
    print(f"{'hardway verify --chapter etcd':34}{med['verify']:>9.2f}")


if __name__ == "__main__":
    main()
