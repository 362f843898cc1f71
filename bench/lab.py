"""Boot and teardown time of the local lab, for 3 and 12 nodes.

    python bench/lab.py [--repeats N] [--sizes 3,12]

Each run boots a lab with its own name (bench-<size>-<pid>-<i>) and a free subnet, times
``hardway.lab.up`` (which returns once every node's systemd is ``running`` and root logs in
over strict SSH), checks ``lab.status`` right after it, then times ``lab.down`` (which returns
once every process of the lab's machines has left the process table) and checks that nothing of
the lab is left. The lab is always removed, also on errors and Ctrl-C. Needs root.

Sizes: 3 = 3 controllers; 12 = 3 controllers + 9 workers. The ratio column compares the time
per node with that of the smallest size (1.00 = boot time grows linearly with node count).
Exit code 1 if any run failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardway import lab
from hardway.errors import HardwayError
from hardway.lab import machine


def shape(size: int) -> tuple[int, int]:
    controllers = min(3, size)
    return controllers, size - controllers


@dataclass
class Run:
    up: float | None = None
    down: float | None = None
    problem: str | None = None  # the first thing that went wrong, in one line


def quiet(_line: str) -> None:
    pass


def one_run(size: int, index: int) -> Run:
    name = f"bench-{size}-{os.getpid() % 100000}-{index}"
    controllers, workers = shape(size)
    result = Run()
    try:
        subnet = lab.free_subnet(seed=(os.getpid() + 17 * size + index) % 256)
        started = time.monotonic()
        booted = lab.up(name, controllers, workers, str(subnet), report=quiet)
        result.up = time.monotonic() - started
        not_ok = [f"{r.node}: systemd {r.systemd}, ssh {r.ssh}" for r in lab.status(name) if not r.ok]
        if not_ok:
            result.problem = f"lab.status right after lab.up: {'; '.join(not_ok)}"
        layout = booted.layout
    except HardwayError as exc:
        result.problem = f"lab.up: {exc}"
        layout = None
    finally:  # also on Ctrl-C: the lab goes, and a failing down does not hide why up failed
        started = time.monotonic()
        try:
            lab.down(name, report=quiet)
            result.down = time.monotonic() - started
        except HardwayError as exc:
            result.problem = result.problem or f"lab.down: {exc}"
    if layout is not None and result.problem is None:
        left = machine.leftovers(layout)
        if left:
            result.problem = f"left after lab.down: {', '.join(left)}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="3,12")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        lab.preflight(report=print)
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: give whole numbers separated by commas, e.g. 3,12", file=sys.stderr)
        return 1
    except HardwayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"lab.up to every node running + SSH-ready, lab.down to nothing left "
          f"({os.cpu_count()} cores, {args.repeats} runs each, median)")
    print(f"{'nodes':>5}  {'shape':<12} {'up s':>6} {'s/node':>7} {'ratio':>6} {'down s':>7}  failed")
    base_per_node = None
    failed = 0
    for size in sizes:
        runs = [one_run(size, i) for i in range(args.repeats)]
        problems = [r.problem for r in runs if r.problem]
        failed += len(problems)
        ups = [r.up for r in runs if r.up is not None]
        downs = [r.down for r in runs if r.down is not None]
        c, w = shape(size)
        if not ups:
            print(f"{size:>5}  {f'{c}c + {w}w':<12} {'-':>6} {'-':>7} {'-':>6} {'-':>7}  {len(problems)}")
        else:
            per_node = statistics.median(ups) / size
            base_per_node = base_per_node or per_node
            down = f"{statistics.median(downs):>7.2f}" if downs else f"{'-':>7}"
            print(f"{size:>5}  {f'{c}c + {w}w':<12} {statistics.median(ups):>6.2f} {per_node:>7.2f} "
                  f"{per_node / base_per_node:>6.2f} {down}  {len(problems)}")
        for problem in problems:
            print(f"       {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
