"""Benchmark: the whole chain from nothing, and bootstrap-workers + verify at 2 and at 12 workers.

    python bench/bootstrap_workers.py [--workers-scale 12] [--skip-chain]

1. The chain as a user types it, one `invoke` process, timed from nothing (no lab):
   `lab.up pki bootstrap-etcd [bootstrap-control-plane] bootstrap-workers --fix pod-routes verify` on
   3 controllers + 2 workers. bootstrap-control-plane is included when this checkout has it. `--fix`:
   a fresh lab node has net.ipv4.ip_forward = 0, as fresh Debian does, and hardway changes kernel
   settings only when asked.
2. `bootstrap-workers --fix` + `verify --chapter workers` as library calls on fresh labs of 1 controller
   with 2 and with --workers-scale workers (the labs are booted untimed), with where the time went and
   how many MB went to the nodes, then the ratio.
Prints the machine's load average before and after: other helpers' labs share these 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import host_cpu_seconds  # noqa: E402
from hardway import jumpbox, lab, remote  # noqa: E402
from hardway.chapters import Context  # noqa: E402
from hardway.chapters.workers import CHAPTER as WORKERS  # noqa: E402
from hardway.state import PkiState  # noqa: E402

QUIET = lambda _m: None  # noqa: E731


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def chain(tmp: Path) -> tuple[float, str] | None:
    """The chain from nothing in one invoke process; returns (seconds, the tasks), None when this
    checkout has no bootstrap-control-plane (workers' checks need the control plane's files)."""
    name = f"bw{os.getpid() % 10000}"
    subnet = lab.free_subnet(hash(name) & 0xFFFF)
    tasks = ["pki", "bootstrap-etcd"]
    listed = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True).stdout
    if "bootstrap-control-plane" not in listed:
        return None
    tasks.append("bootstrap-control-plane")
    tasks += ["bootstrap-workers", "--fix", "pod-routes", "verify"]
    inv = lab.STATE_ROOT / name / "inventory.yaml"
    argv = [sys.executable, "-m", "invoke", "lab.up", "--name", name, "--subnet", str(subnet), "--nodes", "3",
            "--workers", "2"]
    for t in tasks:
        argv.append(t)
        if not t.startswith("--"):
            argv += ["--inventory", str(inv), "--pki-dir", str(tmp / name)]
    try:
        t0 = time.monotonic()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        seconds = time.monotonic() - t0
        if done.returncode != 0:
            raise SystemExit(f"chain failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
        return seconds, " ".join(tasks)
    finally:
        lab.down(name, report=QUIET)


def controller_files(inv, state: PkiState) -> None:
    """What bootstrap-control-plane puts on controllers for the apiserver→kubelet check (only these:
    the scale rounds time the workers chapter alone)."""
    from hardway import deploy
    from hardway.chapters.workers import verify as wv
    from hardway.files import File

    client = "apiserver-kubelet-client"
    files = [File(wv.APISERVER_CA, 0o644, state.cert("ca").read_bytes()),
             File(wv.KUBELET_CLIENT_CERT, 0o644, state.cert(client).read_bytes()),
             File(wv.KUBELET_CLIENT_KEY, 0o600, state.key(client).read_bytes(), secret=True)]
    for c in inv.controllers:
        r = remote.connect(inv, c)
        try:
            deploy.install(r, files)
        finally:
            r.close()


def workers_round(count: int, tmp: Path) -> dict[str, float]:
    name = f"bw{count}x{os.getpid() % 1000}"
    lab.down(name, report=QUIET)
    the_lab = lab.up(name, 1, count, str(lab.free_subnet(hash(name) & 0xFFFF)), report=QUIET)
    try:
        state = PkiState(tmp / name)
        jumpbox.generate(the_lab.inventory, state)
        controller_files(the_lab.inventory, state)
        cpu0 = host_cpu_seconds()
        with remote.Pool() as pool:
            ctx = Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET, fix=True)
            t0 = time.monotonic()
            report = WORKERS.apply(ctx)
            applied = time.monotonic() - t0
        with remote.Pool() as pool:
            t1 = time.monotonic()
            results = WORKERS.verify(Context(the_lab.inventory, state, connector=pool, progress=remote.QUIET))
            verified = time.monotonic() - t1
        cpu = host_cpu_seconds() - cpu0
        failed = [r for r in results if r.status == "fail"]
        if failed:
            raise SystemExit(f"{count} workers: verify failed: {failed[0]}")
        return {"bootstrap-workers": applied, "verify": verified, "total": applied + verified,
                "host CPU (all procs)": cpu, "MB": report.bytes_sent / 1e6,
                **{f"  {k}": v for k, v in report.phases.items()}}
    finally:
        lab.down(name, report=QUIET)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers-scale", type=int, default=12)
    ap.add_argument("--skip-chain", action="store_true")
    args = ap.parse_args()
    print(f"before: {load()}")
    with tempfile.TemporaryDirectory(prefix="hardway-bench-") as tmp:
        if not args.skip_chain:
            measured = chain(Path(tmp))
            if measured is None:
                print("chain from nothing: not measured: this checkout has no bootstrap-control-plane")
            else:
                seconds, tasks = measured
                print(f"chain from nothing, 3 controllers + 2 workers: {seconds:.1f} s  (invoke lab.up {tasks})"
                      f"  target <= 20 s: {'met' if seconds <= 20 else 'NOT met'}")
        small = workers_round(2, Path(tmp))
        big = workers_round(args.workers_scale, Path(tmp))
    width = max(len(k) for k in small)
    print(f"\n{'':{width}}  {'2 workers':>10}  {f'{args.workers_scale} workers':>11}  ratio")
    for key in small:
        a, b = small[key], big.get(key, 0.0)
        unit = "" if key == "MB" else " s"  # host CPU: core-seconds, every process on the host
        print(f"{key:{width}}  {a:>8.2f}{unit:2}  {b:>9.2f}{unit:2}  {b / a if a else 0:>5.2f}x")
    ratio = big["total"] / small["total"]
    print(f"\nbootstrap-workers + verify, {args.workers_scale} vs 2 workers: {ratio:.2f}x  target <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'NOT met'}")
    cores, cpu = os.cpu_count() or 1, "host CPU (all procs)"
    per_worker = (big[cpu] - small[cpu]) / (args.workers_scale - 2)
    print(f"each added worker costs {per_worker:.2f} core-s of host CPU (its MB through ssh, its containerd, "
          f"kubelet and kube-proxy); {args.workers_scale} workers cannot take less than {big[cpu] / cores:.2f} s "
          f"on {cores} cores, {big[cpu] / cores / small['total']:.2f}x the 2-worker time")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
