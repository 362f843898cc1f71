"""Reading the host: processes, mounts, network namespaces, links and networks (the parsers are
pure); running commands; the preflight (root, packages, kernel features and limits)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from hardway.errors import HardwayError
from hardway.lab.addresses import SCRATCH_POOL, LabLayout, link_pattern, owned_by, recorded_labs

PACKAGES = ("systemd-container", "openssh-server", "etcd-server", "etcd-client", "iproute2",
            "haproxy")  # the load balancer node runs the host's HAProxy

Report = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Running commands


def run(cmd: list[str], check: bool = True, timeout: float = 60.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command; with ``check``, a failure is one HardwayError line naming the command."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                             stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise HardwayError(f"{cmd[0]} not found; install it (lab.up installs {', '.join(PACKAGES)})") from None
    except subprocess.TimeoutExpired:
        raise HardwayError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from None
    if check and res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip() or f"exit code {res.returncode}").splitlines()[-1]
        raise HardwayError(f"`{' '.join(cmd)}` failed: {detail}")
    return res


# --------------------------------------------------------------------------------------------
# Processes


def nspawn_node(argv: list[str], state_dir: Path) -> str | None:
    """The node a systemd-nspawn command line boots, if it belongs to the lab at ``state_dir``."""
    if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
        return None
    prefix = f"--directory={state_dir}/nodes/"
    for arg in argv[1:]:
        if arg.startswith(prefix) and arg.endswith("/merged"):
            node = arg[len(prefix):-len("/merged")]
            if node and "/" not in node:
                return node
    return None


def proc_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return data.rsplit(")", 1)[1].split()[0] != "Z"


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid it names one process, as pids are
    reused. None once the process has left the process table (a zombie is still in it)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def nspawn_processes(p: LabLayout) -> dict[str, int]:
    """node name -> pid of every live systemd-nspawn booting a node of this lab.

    nspawn's children carry its command line until they exec (the machine's PID 1 among them), and
    one may briefly have a parent that has exited (a zombie, whose command line is empty): so a match
    whose parent also matches is left out, and of the rest the oldest is the machine's nspawn (a
    child starts after its parent)."""
    found: dict[int, str] = {}
    for pid in all_pids():
        node = nspawn_node(proc_argv(pid), p.state_dir)
        if node is not None and alive(pid):
            found[pid] = node
    oldest: dict[str, tuple[int, int]] = {}
    for pid, node in found.items():
        started = start_time(pid)
        if started is None or parent_pid(pid) in found:
            continue
        if node not in oldest or (started, pid) < oldest[node]:
            oldest[node] = (started, pid)
    return {node: pid for node, (_, pid) in sorted(oldest.items())}


def init_pid(nspawn_pid: int) -> int | None:
    """The node's PID 1 (as seen from the host): the child of its systemd-nspawn in a PID namespace
    of its own (nspawn's other children, helpers, live in the host's)."""
    try:
        host_ns = os.readlink(f"/proc/{nspawn_pid}/ns/pid")
    except OSError:
        return None
    for pid in all_pids():
        if parent_pid(pid) == nspawn_pid and alive(pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") != host_ns:
                    return pid
    return None


# --------------------------------------------------------------------------------------------
# Mounts


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, fs type) for each line of /proc/self/mountinfo, with octal escapes decoded."""
    return [(point, fstype) for point, fstype, _ in parse_mountinfo_options(text)]


def parse_mountinfo_options(text: str) -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) for each line of a mountinfo text."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or "-" not in parts:
            continue
        sep = parts.index("-")
        if len(parts) < sep + 4:
            continue
        out.append((_unescape(parts[4]), parts[sep + 1], parts[sep + 3]))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def lab_mounts(p: LabLayout) -> list[str]:
    """Mount points under the lab's state dir, deepest first."""
    text = Path("/proc/self/mountinfo").read_text()
    root = str(p.state_dir)
    points = [m for m, _ in parse_mountinfo(text) if m == root or m.startswith(root + "/")]
    return sorted(set(points), key=lambda m: m.count("/"), reverse=True)


# --------------------------------------------------------------------------------------------
# Network namespaces, links, networks


def netns_list() -> list[str]:
    names = set()
    with contextlib.suppress(FileNotFoundError):
        names.update(os.listdir("/run/netns"))
    res = run(["ip", "netns", "list"], check=False)
    names.update(line.split()[0] for line in res.stdout.splitlines() if line.strip())
    return sorted(names)


def lab_netns(p: LabLayout) -> list[str]:
    return [ns for ns in netns_list() if owned_by(p.name, ns)]


def links() -> list[str]:
    res = run(["ip", "-j", "link", "show"], check=False)
    try:
        return [entry["ifname"] for entry in json.loads(res.stdout or "[]")]
    except (ValueError, KeyError):
        return []


def lab_links(p: LabLayout) -> list[str]:
    pattern = link_pattern(p.name)
    return [name for name in links() if pattern.match(name)]


def host_networks(exclude_dev: str | None) -> list[ipaddress.IPv4Network]:
    """Networks of the host's IPv4 addresses and routes (not the default route)."""
    nets: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(ValueError, KeyError, HardwayError):
        for entry in json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
            if entry.get("ifname") == exclude_dev:
                continue
            for a in entry.get("addr_info", []):
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
        for route in json.loads(run(["ip", "-j", "-4", "route", "show"]).stdout or "[]"):
            dst = route.get("dst")
            if dst and dst != "default" and route.get("dev") != exclude_dev:
                nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return [n for n in nets if not n.is_loopback]


def free_subnet(
    seed: int,
    taken: list[ipaddress.IPv4Network] | None = None,
    avoid: tuple[ipaddress.IPv4Network, ...] = (),
) -> ipaddress.IPv4Network:
    """A /24 from SCRATCH_POOL that overlaps nothing in ``taken`` (default: the host's routes and
    addresses and every recorded lab) nor ``avoid``, starting from ``seed``: for tests and benchmarks."""
    if taken is None:
        taken = host_networks(exclude_dev=None) + [lab.subnet for lab in recorded_labs()]
    taken = [*taken, *avoid]
    subnets = list(SCRATCH_POOL.subnets(new_prefix=24))
    for k in range(len(subnets)):
        candidate = subnets[(seed + k) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise HardwayError(f"no free /24 left in {SCRATCH_POOL}; remove some labs (invoke lab.down --name NAME)")


# --------------------------------------------------------------------------------------------
# Preflight


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HardwayError(f"{what} needs root (it manages network namespaces, mounts and machines); "
                           "run it as root")


def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def preflight(report: Report = print) -> None:
    """Root, the Debian packages (installed if missing), overlayfs, nspawn and netns support."""
    require_root("the lab")
    if shutil.which("dpkg-query"):
        missing = missing_packages()
        if missing:
            report(f"lab: installing missing Debian packages: {' '.join(missing)} (apt-get)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    tail = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
                    raise HardwayError(f"could not install {' '.join(missing)}: `{' '.join(cmd)}`: {tail}")
    for tool in ("systemd-nspawn", "ip", "nsenter", "setsid", "mount", "umount"):
        if shutil.which(tool) is None:
            raise HardwayError(f"{tool} not found: the lab needs {', '.join(PACKAGES)} and util-linux")
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise HardwayError("this kernel has no overlayfs (not in /proc/filesystems, modprobe overlay "
                               "failed); the lab needs it")
    if not Path("/proc/self/ns/net").exists():
        raise HardwayError("this kernel has no network namespaces (/proc/self/ns/net missing)")
    res = run(["ip", "netns", "list"], check=False)
    if res.returncode != 0:
        raise HardwayError(f"`ip netns` does not work here: {res.stderr.strip()}")
    raise_kernel_limits(report)


# Every node's systemd, journald, logind and dbus take ~10 inotify instances from root's
# host-wide budget (no user namespaces): Debian's default of 128 runs out at about a dozen
# nodes, and then services fail in odd ways (sshd never listening, stuck shutdowns).
KERNEL_LIMITS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 524288}


def raise_kernel_limits(report: Report = print) -> None:
    """Raise (never lower) the host limits the lab needs, saying so."""
    for key, wanted in KERNEL_LIMITS.items():
        path = Path("/proc/sys") / key
        try:
            current = int(path.read_text())
        except (OSError, ValueError):
            continue
        if current < wanted:
            try:
                path.write_text(f"{wanted}\n")
            except OSError as exc:
                raise HardwayError(f"cannot raise {key.replace('/', '.')} from {current} to {wanted} "
                                   f"(the lab's machines need it): {exc}") from None
            report(f"lab: raised {key.replace('/', '.')} from {current} to {wanted} for the lab's machines")
