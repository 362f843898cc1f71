"""Benchmark: a fresh lab to a verified etcd cluster, hardway vs the tutorial's hand way, plus scale.

    python bench/bootstrap_etcd.py [--rounds N] [--scale 9]

Each round boots fresh labs (not timed) and times, in the same run:
- hardway, 3 members: `bootstrap-etcd` as a library call (preflight incl. an fdatasync probe,
  parallel push, concurrent start, health wait, full verify), with where the time went and how
  many MB went to the nodes at what rate; then the idempotent re-run and `verify --chapter etcd`
  alone, both as library calls (fresh connections) and as the CLI (`invoke ...`, a new process);
- the hand way, 3 members: the same rendered files pushed one node after another, one ssh/scp
  connection per step (mkdir, copy binaries, certs and unit, daemon-reload, enable, start), then
  `etcdctl endpoint health` for every member. Its start uses --no-block: a blocking `systemctl
  start` of a Type=notify member would hang waiting for a quorum that the later nodes provide;
- hardway with ``--scale`` members (default 9): fresh, re-run and verify, as a ratio to 3, each beside
  the host's CPU seconds for it (every process: the lab's members share this host's cores, so a step
  cannot take less wall time than its CPU seconds divided by the cores).
Prints one table with the ratios side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cli, measured, ssh_options  # noqa: E402
from hardway import jumpbox, lab, remote  # noqa: E402
from hardway.chapters import Context  # noqa: E402
from hardway.chapters.etcd import CHAPTER as ETCD  # noqa: E402
from hardway.chapters.etcd.files import ctl  # noqa: E402
from hardway.plan import chapter_files  # noqa: E402
from hardway.state import PkiState  # noqa: E402


def fresh_lab(tag: str, controllers: int) -> lab.Lab:
    name = f"be{tag}{os.getpid() % 1000}"
    lab.down(name, report=lambda _m: None)
    return lab.up(name, controllers, 0, str(lab.free_subnet(hash(name) & 0xFFFF)), report=lambda _m: None)


def make_pki(the_lab: lab.Lab, root: Path) -> PkiState:
    state = PkiState(root / the_lab.name)
    jumpbox.generate(the_lab.inventory, state)
    return state


def library_apply(the_lab: lab.Lab, state: PkiState):  # -> ApplyReport
    with remote.Pool() as pool:
        return ETCD.apply(Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET))


def library_verify(the_lab: lab.Lab, state: PkiState) -> list:
    with remote.Pool() as pool:
        return ETCD.verify(Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET))



def hand_way(the_lab: lab.Lab, state: PkiState, workdir: Path) -> float:
    inv = the_lab.inventory
    ssh_opts = ssh_options(inv)
    t0 = time.monotonic()
    for node in inv.controllers:
        files = chapter_files(inv, node, state, "etcd")
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
            probe = subprocess.run(["ssh", *ssh_opts, f"root@{node.address}", ctl(inv, node, "endpoint health")],
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"baseline: {node.name} never became healthy")
    return time.monotonic() - t0


def hardway_round(tag: str, members: int, tmp: Path, rows: dict[str, list[float]], cli_too: bool) -> None:
    the_lab = fresh_lab(tag, members)
    try:
        state = make_pki(the_lab, tmp)
        seconds, cpu, report = measured(lambda: library_apply(the_lab, state))
        assert not [r for r in report.results if r.status == "fail"], "hardway bootstrap did not verify"
        rows[f"fresh{members}"].append(seconds)
        rows.setdefault(f"cpu-fresh{members}", []).append(cpu)
        rows[f"mb{members}"].append(report.bytes_sent / 1e6)
        rows[f"push{members}"].append(report.phases["push"])
        for phase, t in report.phases.items():
            rows.setdefault(f"phase{members}:{phase}", []).append(t)
        seconds, cpu, again = measured(lambda: library_apply(the_lab, state))
        assert not any(again.written.values()) and not again.restarted and not again.started
        rows[f"rerun{members}"].append(seconds)
        rows.setdefault(f"cpu-rerun{members}", []).append(cpu)
        seconds, cpu, _ = measured(lambda: library_verify(the_lab, state))
        rows[f"verify{members}"].append(seconds)
        rows.setdefault(f"cpu-verify{members}", []).append(cpu)
        if cli_too:
            rows[f"rerun-cli{members}"].append(cli(the_lab, state, "bootstrap-etcd")[0])
            rows[f"verify-cli{members}"].append(cli(the_lab, state, "verify", "--chapter", "etcd")[0])
    finally:
        lab.down(the_lab.name, report=lambda _m: None)


def phases(med: dict[str, float], members: int) -> str:
    prefix = f"phase{members}:"
    return "  ".join(f"{k.removeprefix(prefix)} {v:.2f}" for k, v in med.items() if k.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scale", type=int, default=9, help="members for the scale comparison (0: skip)")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in (
        "baseline", "fresh3", "mb3", "push3", "rerun3", "verify3", "rerun-cli3", "verify-cli3",
        f"fresh{args.scale}", f"mb{args.scale}", f"push{args.scale}", f"rerun{args.scale}", f"verify{args.scale}")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            hardway_round(f"h{i}", 3, Path(tmp), rows, cli_too=True)
            b = fresh_lab(f"b{i}", 3)
            try:
                rows["baseline"].append(hand_way(b, make_pki(b, Path(tmp)), Path(tmp) / f"stage{i}"))
            finally:
                lab.down(b.name, report=lambda _m: None)
            if args.scale:
                hardway_round(f"s{i}", args.scale, Path(tmp), rows, cli_too=False)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"fresh lab -> verified etcd ({args.rounds} round(s), median seconds)")
    print(f"  {'hand way, 3 members (scp/ssh per step, serial)':52}{med['baseline']:>8.2f}")
    print(f"  {'hardway bootstrap-etcd, 3 members (+verify)':52}{med['fresh3']:>8.2f}")
    print(f"  {'ratio hand way / hardway':52}{med['baseline'] / med['fresh3']:>8.2f}x")
    print(f"  {'  where it went':52}{phases(med, 3)}")
    print(f"  {'  sent to the nodes':52}{med['mb3']:>8.1f} MB at {med['mb3'] / med['push3']:.0f} MB/s")
    print(f"  {'hardway idempotent re-run (library / CLI)':52}{med['rerun3']:>8.2f} / {med['rerun-cli3']:.2f}")
    print(f"  {'hardway verify --chapter etcd (library / CLI)':52}{med['verify3']:>8.2f} / {med['verify-cli3']:.2f}")
    if args.scale:
        n = args.scale
        print(f"scale: {n} members against 3 (same run)")
        cores = os.cpu_count() or 1
        for key, label in (("fresh", "fresh bootstrap"), ("rerun", "re-run"), ("verify", "verify")):
            big, small = med[f"cpu-{key}{n}"], med[f"cpu-{key}3"]
            print(f"  {label:52}{med[f'{key}{n}']:>8.2f} vs {med[f'{key}3']:.2f}  "
                  f"({med[f'{key}{n}'] / med[f'{key}3']:.2f}x)   host CPU {big:.2f} vs {small:.2f} core-s "
                  f"({big / small:.2f}x), floor {big / cores:.2f} s on {cores} cores")
        print(f"  {'':52}(the lab's members share this host's {cores} cores: no step can take less wall "
              "time than its host CPU / cores)")
        print(f"  {'  sent to the nodes':52}{med[f'mb{n}']:>8.1f} MB at {med[f'mb{n}'] / med[f'push{n}']:.0f} MB/s")
        print(f"  {'  where it went':52}{phases(med, n)}")


if __name__ == "__main__":
    main()
