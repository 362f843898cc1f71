"""Boot time of the local lab: from nothing to every node SSH-ready, for 3 and 12 nodes.

    python bench/lab.py [--repeats N] [--sizes 3,12]

Each run boots a lab with its own name (bench-<size>-<pid>) and a free subnet, times
``hardway.lab.up`` (which returns once every node accepts a strict-host-key SSH login), then
times ``down``; the lab is always removed, also on errors and Ctrl-C. Needs root.

Sizes: 3 = 3 controllers; 12 = 3 controllers + 9 workers. The ratio column compares the time
per node with that of the smallest size (1.00 = boot time grows linearly with node count).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardway import lab
from hardway.errors import HardwayError


def shape(size: int) -> tuple[int, int]:
    controllers = min(3, size)
    return controllers, size - controllers


def one_run(size: int, index: int) -> tuple[float, float]:
    name = f"bench-{size}-{os.getpid() % 100000}-{index}"
    controllers, workers = shape(size)
    subnet = lab.free_subnet(seed=(os.getpid() + 17 * size + index) % 256)
    started = time.monotonic()
    try:
        lab.up(name, controllers, workers, str(subnet), report=lambda _: None)
        booted = time.monotonic() - started
    finally:
        t = time.monotonic()
        lab.down(name, report=lambda _: None)
        teardown = time.monotonic() - t
    return booted, teardown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="3,12")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        lab.preflight(report=print)
    except HardwayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"lab boot to all nodes SSH-ready ({os.cpu_count()} cores, {args.repeats} runs each, median)")
    print(f"{'nodes':>5}  {'shape':<16} {'boot s':>7} {'s/node':>7} {'ratio':>6} {'down s':>7}")
    base_per_node = None
    for size in sizes:
        boots, downs = [], []
        for i in range(args.repeats):
            try:
                booted, teardown = one_run(size, i)
            except HardwayError as exc:
                print(f"{size:>5}  failed: {exc}")
                break
            boots.append(booted)
            downs.append(teardown)
        if not boots:
            continue
        boot = statistics.median(boots)
        per_node = boot / size
        base_per_node = base_per_node or per_node
        c, w = shape(size)
        print(f"{size:>5}  {f'{c}c + {w}w':<16} {boot:>7.2f} {per_node:>7.2f} {per_node / base_per_node:>6.2f} "
              f"{statistics.median(downs):>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
