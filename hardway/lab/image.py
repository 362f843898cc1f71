"""A node's disk: what its overlay upper dir holds before the first boot, and the lab's SSH keys.

The lower dir is the host's ``/``. The upper dir makes a machine of its own out of it: hostname,
a fresh machine-id, /etc/hosts naming every lab node, the lab's SSH key in root's
authorized_keys, SSH host keys generated here (so the lab's known_hosts is written from the
node's disk: no trust on first use), masks for the services the host image would start, and
whiteouts hiding what hardway itself distributes (etcd and friends), so a node starts as bare as
hardware would.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from hardway import localfs
from hardway.chapters import distributed_binaries, distributed_units
from hardway.errors import HardwayError
from hardway.lab.addresses import STATE_ROOT, LabLayout, LabNode, known_hosts_line, render_hosts, render_sshd_config

# Units the host enables that nodes keep; every other unit enabled under
# /etc/systemd/system/*.wants on the host is masked in the nodes (postgresql, timers, ...).
KEEP_UNITS = frozenset({"ssh.service", "sshd.service", "remote-fs.target", "machines.target"})
# Templates of masked units whose instances a generator would start anyway.
EXTRA_MASKS = ("postgresql@.service",)
# Host state that must not show through: the packaged etcd's data dir (a node starts without one),
# the containerd package's config (hardway writes its own: the package's would be a foreign file)
# and the CNI plugins' package dir (hardway installs them into /opt/cni/bin).
HIDDEN_DIRS = ("var/lib/etcd", "etc/containerd", "usr/lib/cni")
# Where a jumpbox keeps secrets: nodes get these as empty directories of their own (opaque in the
# overlay), so a CA key in the checkout's pki/ or a test's PKI under /tmp never reaches a node.
EMPTIED_DIRS = ("tmp", "var/tmp", "home", "root")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the hardway checkout: pki/, build/


@dataclass(frozen=True)
class NodeImage:
    """What a node's upper dir must hold, derived from the host: masks, hidden paths, files."""

    masks: tuple[str, ...]  # units masked in /etc/systemd/system
    hidden: tuple[str, ...]  # paths relative to / whited out
    emptied: tuple[str, ...] = ()  # directories relative to / that start empty on the node
    enable: tuple[str, ...] = ("multi-user.target.wants/ssh.service",)


def node_image(state_root: Path = STATE_ROOT, host_root: Path = Path("/")) -> NodeImage:
    """Decide, from the host at ``host_root``, which units to mask and which paths to hide."""
    # Units hardway installs itself at /etc/systemd/system/<unit>: never a /dev/null mask there
    # (an upload would write into /dev/null); the packaged unit is disabled by hiding its wants link.
    units = set(distributed_units())
    etc_units = host_root / "etc/systemd/system"
    masks: set[str] = set(EXTRA_MASKS)
    hidden: set[str] = set()
    for link in sorted(glob.glob(str(etc_units / "*.wants" / "*")) + glob.glob(str(etc_units / "*.requires" / "*"))):
        unit = os.path.basename(link)
        rel = os.path.relpath(link, host_root)
        if unit in units:
            hidden.add(rel)  # disabled, not masked: our own unit goes to /etc/systemd/system/<unit>
        elif unit not in KEEP_UNITS:
            masks.add(unit)
    for unit in units:
        for rel in (f"etc/systemd/system/{unit}", f"etc/systemd/system/{unit}.d"):
            if os.path.lexists(host_root / rel):
                hidden.add(rel)
    for link in glob.glob(str(etc_units / "*")):  # aliases such as etcd2.service -> etcd.service
        if os.path.islink(link) and os.path.basename(os.readlink(link)) in units:
            hidden.add(os.path.relpath(link, host_root))
    for name in distributed_binaries():  # the host's copies; hardway installs its own in /usr/local/bin
        for d in ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"):
            if os.path.lexists(host_root / d / name):
                hidden.add(f"{d}/{name}")
    for path in glob.glob(str(host_root / "usr/local/bin/etcd*")):
        hidden.add(os.path.relpath(path, host_root))
    for rel in HIDDEN_DIRS:
        if os.path.lexists(host_root / rel):
            hidden.add(rel)
    for path in glob.glob(str(host_root / "etc/ssh/ssh_host_*")):
        if not os.path.basename(path).startswith("ssh_host_ed25519_key"):
            hidden.add(os.path.relpath(path, host_root))  # the jumpbox's own host keys stay on it
    # The labs' state (every node's disk, the lab's private key) is not the nodes' business.
    with contextlib.suppress(ValueError):
        rel_state = state_root.resolve().relative_to(host_root.resolve())
        if str(rel_state) != ".":
            hidden.add(str(rel_state))
    emptied = {rel for rel in EMPTIED_DIRS if os.path.isdir(host_root / rel)}
    with contextlib.suppress(ValueError):
        emptied.add(str(PROJECT_ROOT.relative_to(host_root.resolve())))
    return NodeImage(masks=tuple(sorted(masks)), hidden=tuple(sorted(hidden)), emptied=tuple(sorted(emptied)))


# --------------------------------------------------------------------------------------------
# Writing the upper dir. Not through localfs: these are entries of a machine's disk (root-owned
# files, symlinks, whiteouts, directories shadowing the host's), not the jumpbox's files. The disk
# is not used before the ``prepared`` marker is written (through localfs) after the last entry;
# a disk without it is wiped and written again.


@dataclass(frozen=True)
class Symlink:
    to: str


WHITEOUT = None  # an overlayfs whiteout (char device 0:0): hides the host's path from the node


def _mkdirs(upper: Path, rel: str) -> Path:
    """Create ``upper/rel`` and its parents, copying each directory's mode and owner from the
    host's, so a plain (non-opaque) upper directory merges with the lower one unchanged."""
    path = upper
    lower = Path("/")
    for part in Path(rel).parts:
        path, lower = path / part, lower / part
        if path.is_dir():
            continue
        st = os.lstat(lower) if os.path.lexists(lower) else None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise HardwayError(f"internal: {lower} is not a directory on the host; cannot shadow it")
        path.mkdir()
        if st is not None:
            os.chmod(path, stat.S_IMODE(st.st_mode))
            os.chown(path, st.st_uid, st.st_gid)
    return path


def _put(upper: Path, rel: str, content: str | bytes | Symlink | None, mode: int = 0o644) -> None:
    """Make ``/rel`` on the node's disk: a root-owned file holding ``content``, a symlink, or
    (``WHITEOUT``) nothing at all. Whatever the upper dir had there goes first."""
    target = _mkdirs(upper, os.path.dirname(rel)) / os.path.basename(rel)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()
    if content is WHITEOUT:
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    elif isinstance(content, Symlink):
        os.symlink(content.to, target)
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content.encode() if isinstance(content, str) else content)
            os.fchmod(fh.fileno(), mode)  # the umask narrowed it
            os.fchown(fh.fileno(), 0, 0)


def new_ssh_key() -> tuple[bytes, str]:
    """A fresh Ed25519 key: (OpenSSH private key bytes, 'ssh-ed25519 AAAA...' public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def prepare_node(p: LabLayout, node: LabNode, image: NodeImage, authorized_key: str) -> None:
    """Write the node's upper dir (once): identity, SSH, masks and whiteouts."""
    d = p.node_dir(node)
    marker = d / "prepared"
    if marker.exists():
        return
    if d.exists():  # half-written by an interrupted run
        for sub in ("upper", "work"):
            shutil.rmtree(d / sub, ignore_errors=True)
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / sub, 0o755)
    upper = p.upper(node)
    _put(upper, "etc/hostname", f"{node.name}\n")
    _put(upper, "etc/machine-id", f"{uuid.uuid4().hex}\n", 0o444)
    _put(upper, "etc/hosts", render_hosts(p))
    for rel in image.emptied:  # root's home among them: Debian's dotfiles, not the jumpbox's
        os.setxattr(_mkdirs(upper, rel), "trusted.overlay.opaque", b"y")
    for dotfile in ("bashrc", "profile"):
        default = Path(f"/usr/share/base-files/dot.{dotfile}")
        _put(upper, f"root/.{dotfile}", default.read_bytes() if default.is_file() else b"")
    os.chmod(_mkdirs(upper, "root/.ssh"), 0o700)
    _put(upper, "root/.ssh/authorized_keys", authorized_key, 0o600)
    private, public = new_ssh_key()
    _put(upper, "etc/ssh/ssh_host_ed25519_key", private, 0o600)
    _put(upper, "etc/ssh/ssh_host_ed25519_key.pub", f"{public} root@{node.name}\n")
    _put(upper, "etc/ssh/sshd_config.d/hardway-lab.conf", render_sshd_config(node))
    for rel in image.hidden:
        _put(upper, rel, WHITEOUT)
    for unit in image.masks:
        _put(upper, f"etc/systemd/system/{unit}", Symlink("/dev/null"))
    for rel in image.enable:
        _put(upper, f"etc/systemd/system/{rel}", Symlink(f"/lib/systemd/system/{os.path.basename(rel)}"))
    localfs.write_atomic(marker, b"", 0o644)


def read_host_key(p: LabLayout, node: LabNode) -> str:
    """The node's SSH host public key, read from its disk (its upper dir)."""
    path = p.upper(node) / "etc/ssh/ssh_host_ed25519_key.pub"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise HardwayError(f"node {node.name}: cannot read its host key {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# The lab's SSH files on the jumpbox


def ensure_client_key(p: LabLayout) -> str:
    """The lab's root key (made once, 0600); returns its public line for authorized_keys."""
    localfs.private_dir(p.ssh_key.parent)
    pub_path = p.ssh_key.with_suffix(".pub")
    if not (p.ssh_key.is_file() and pub_path.is_file()):
        private, public = new_ssh_key()
        localfs.write_atomic(p.ssh_key, private, localfs.SECRET_MODE)
        localfs.write_atomic(pub_path, f"{public} hardway-lab-{p.name}\n".encode(), 0o644)
    return pub_path.read_text()


def write_known_hosts(p: LabLayout) -> None:
    """Every node's host key as read from its disk: nothing is trusted on first use."""
    text = "".join(known_hosts_line(n, read_host_key(p, n)) for n in p.nodes)
    localfs.ensure_file(p.known_hosts, text.encode(), 0o644)
