"""Shared fixtures.

Lab fixtures (for tests marked ``lab``) boot real systemd machines with ``hardway.lab``:

- ``lab`` (session): a uniquely named lab with its own subnet, by default 3 controllers +
  2 workers + the load balancer lb-0 like the default lab (a node costs ~0.4 s of boot here: bench/lab.py), or
  ``--lab-controllers N`` / ``--lab-workers M`` (or HARDWAY_LAB_CONTROLLERS / HARDWAY_LAB_WORKERS).
  It is a ``hardway.lab.Lab``: ``.name``, ``.state_dir``, ``.inventory_path`` (the lab's
  inventory YAML, in its state dir), ``.inventory`` (loaded), ``.layout`` (a ``LabLayout``), ``.pids()``,
  ``.stop_node(name)`` / ``.start_node(name)`` (power a node off and on: connections to a
  stopped node time out; its disk is kept), ``.status()``. Tests that stop a node must start
  it again (try/finally): the lab is shared by the whole session.
- ``lab_factory`` (session): ``lab_factory(controllers=1, workers=0, loadbalancers=0)`` boots another small lab
  with its own name and subnet; ``lab_factory.reserve()`` only picks a name and subnet (for a
  test that runs ``lab.up`` itself). Every lab either made is torn down at the end of the
  session, whatever happens: test failures, Ctrl-C (KeyboardInterrupt), SIGTERM, exit.

Never the user's own labs: names are ``t``/``u`` + five characters derived from the pid and the
clock, subnets come from ``hardway.lab.free_subnet`` (10.78.0.0/16, avoiding every recorded lab
and the host's networks).

Without root or systemd-nspawn, lab tests are skipped locally and FAIL in CI (CI=true).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import itertools
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import NoReturn

import pytest

from hardway import lab as lab_lib
from hardway.errors import HardwayError

_LABS: set[str] = set()  # labs this session may have created: removed at the end, always
_counter = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hardway lab")
    group.addoption("--lab-controllers", type=int, default=int(os.environ.get("HARDWAY_LAB_CONTROLLERS", "3")),
                    help="controllers in the session lab (default 3, or $HARDWAY_LAB_CONTROLLERS)")
    group.addoption("--lab-workers", type=int, default=int(os.environ.get("HARDWAY_LAB_WORKERS", "2")),
                    help="workers in the session lab (default 2, or $HARDWAY_LAB_WORKERS)")
    group.addoption("--lab-loadbalancers", type=int,
                    default=int(os.environ.get("HARDWAY_LAB_LOADBALANCERS", "1")),
                    help="load balancers in the session lab (default 1, or $HARDWAY_LAB_LOADBALANCERS)")


def _down_all() -> None:
    for name in sorted(_LABS):
        try:
            lab_lib.down(name, report=lambda _: None)
            _LABS.discard(name)
        except Exception as exc:  # teardown must go on to the next lab
            print(f"\nwarning: could not remove test lab {name}: {exc}")


atexit.register(_down_all)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    _down_all()


def lab_unavailable(reason: str) -> NoReturn:
    """Fail in CI (where the lab must work), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"lab tests cannot run: {reason} (CI=true, so this is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(f"lab tests need the local lab: {reason}")


def unique_lab_name(prefix: str = "t") -> str:
    digest = hashlib.sha256(f"{os.getpid()}-{time.time_ns()}-{next(_counter)}".encode()).digest()
    n = int.from_bytes(digest[:8], "big")
    chars = "0123456789abcdefghijklmnopqrstuvwxyz"
    return prefix + "".join(chars[(n // 36**i) % 36] for i in range(5))


class LabFactory:
    """Boots extra labs for tests; each is registered for teardown before it is started."""

    def __init__(self) -> None:
        self._subnets: list[ipaddress.IPv4Network] = []

    def reserve(self, prefix: str = "u") -> tuple[str, ipaddress.IPv4Network]:
        name = unique_lab_name(prefix)
        seed = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 256
        subnet = lab_lib.free_subnet(seed, avoid=tuple(self._subnets))
        self._subnets.append(subnet)
        _LABS.add(name)
        return name, subnet

    def __call__(self, controllers: int = 1, workers: int = 0, prefix: str = "u",
                 loadbalancers: int = 0) -> lab_lib.Lab:
        name, subnet = self.reserve(prefix)
        try:
            return lab_lib.up(name, controllers, workers, str(subnet), loadbalancers=loadbalancers,
                              report=lambda _: None)
        except HardwayError as exc:
            pytest.fail(f"lab.up {name} ({controllers} controllers + {workers} workers, {subnet}): {exc}",
                        pytrace=False)

    def down(self, name: str) -> list[str]:
        removed = lab_lib.down(name, report=lambda _: None)
        _LABS.discard(name)
        return removed


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab_factory() -> Iterator[LabFactory]:
    if os.geteuid() != 0:
        lab_unavailable("not root (the lab creates network namespaces, mounts and machines)")
    if shutil.which("systemd-nspawn") is None:
        lab_unavailable("systemd-nspawn not found (Debian package systemd-container; scripts/setup.sh "
                        "installs it)")
    try:
        lab_lib.preflight(report=lambda _: None)
    except HardwayError as exc:
        lab_unavailable(str(exc))
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield LabFactory()
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
        _down_all()


@pytest.fixture(scope="session")
def lab(lab_factory: LabFactory, pytestconfig: pytest.Config) -> lab_lib.Lab:
    controllers = pytestconfig.getoption("--lab-controllers")
    workers = pytestconfig.getoption("--lab-workers")
    return lab_factory(controllers, workers, prefix="t", loadbalancers=pytestconfig.getoption("--lab-loadbalancers"))


@pytest.fixture(autouse=True)
def _unit_tests_dial_loopback_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the lab marker never sends a TLS probe beyond loopback (the sample inventory's
    addresses are someone else's network)."""
    if request.node.get_closest_marker("lab") is not None:
        return
    from hardway.chapters.control_plane import probes

    real = probes.get

    def loopback_only(host: str, *args: object, **kwargs: object) -> probes.Probe:
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a unit test dialed {host}: fake the probe (tests/cp_fakes.see_through)")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probes, "get", loopback_only)


@pytest.fixture(scope="session")
def lab_pki(lab: lab_lib.Lab):  # -> hardway.state.PkiState
    """The session lab's PKI (one CA for every lab test module: a second CA would split the cluster)."""
    from hardway import jumpbox
    from hardway.state import PkiState

    state = PkiState(lab.state_dir / "pki")
    jumpbox.generate(lab.inventory, state)
    return state


@pytest.fixture(scope="session")
def inv():  # -> hardway.inventory.Inventory
    """inventory/sample.yaml: 3 controllers, 2 workers, a load balancer (no machine is contacted)."""
    from pathlib import Path

    from hardway import inventory

    return inventory.load(Path(__file__).resolve().parent.parent / "inventory" / "sample.yaml")


@pytest.fixture(scope="session")
def state(inv, tmp_path_factory: pytest.TempPathFactory):  # -> hardway.state.PkiState
    """The sample inventory's real PKI, kubeconfigs and encryption config, made once per session."""
    from hardway import jumpbox
    from hardway.state import PkiState

    st = PkiState(tmp_path_factory.mktemp("pki") / inv.cluster_name)
    jumpbox.generate(inv, st)
    return st


@pytest.fixture(scope="session")
def build(inv, state, tmp_path_factory: pytest.TempPathFactory):  # -> tuple[Path, list[Path]]
    """The sample inventory rendered once: (build dir, files written)."""
    from hardway.build import write_build

    out = tmp_path_factory.mktemp("build") / inv.cluster_name
    return out, write_build(inv, state, out)


@pytest.fixture(scope="session")
def lab_like(tmp_path_factory: pytest.TempPathFactory):  # -> tuple[Inventory, PkiState]
    """The sample inventory with Debian's etcd binaries (preflight asks them for their flags), and its
    PKI: for the etcd chapter's and day 2's tests over the fake."""
    from pathlib import Path

    from hardway import inventory, jumpbox
    from hardway.state import PkiState

    text = (Path(__file__).resolve().parent.parent / "inventory" / "sample.yaml").read_text()
    text = text.replace("etcd: {path: ./bin/etcd}", "etcd: {path: /usr/bin/etcd}")
    text = text.replace("etcdctl: {path: ./bin/etcdctl}", "etcdctl: {path: /usr/bin/etcdctl}")
    inv = inventory.parse(text, "sample.yaml")
    state = PkiState(tmp_path_factory.mktemp("pki") / "hardway")
    jumpbox.generate(inv, state)
    return inv, state
