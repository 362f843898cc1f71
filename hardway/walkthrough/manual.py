"""The commands a person would type to do a chapter by hand, generated from the chapter's own plan.

Pure: from the planned ``File``s of each node (the same list the push installs) it writes, per node,
what to type on the jumpbox (copy what must not be printed: keys, kubeconfigs, the encryption config,
and the binaries) and what to type on the node as root (each text file as a heredoc whose quoted
delimiter cannot occur in it, ``install -m MODE -o OWNER -g GROUP`` into place, then systemd in the
chapter's order). Printing a key is never an option: secrets travel by ``scp`` from the jumpbox's
PKI state, as in the tutorial.

Why a quoted delimiter (``<<'EOF'``): in an unquoted heredoc the shell expands ``$x`` and backticks and
removes every backslash-newline, which turns a unit's continued ``ExecStart=`` into one line with the
next option glued on ("Missing '='"). Quoted, the body is taken byte for byte.
"""

from __future__ import annotations

import base64
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hardway.files import File
from hardway.inventory import Inventory, Node
from hardway.services import systemctl_command

TYPE_MAX_BYTES = 32 * 1024  # a bigger file (the stand-ins' programs) is copied from `invoke render`'s output
_RUN = secrets.token_hex(6)
STAGING_ROOT = "/var/tmp"  # where copied and typed files wait on the node until `install` puts them in place
B64_WIDTH = 76


@dataclass(frozen=True)
class Section:
    """Commands typed in one place: ``where`` is "jumpbox" or a node's name."""

    where: str
    title: str
    commands: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.commands)


def staging_dir(chapter: str) -> str:
    """Unguessable (a suffix drawn once per run): another user of the node cannot make it first and read the
    keys copied into it; created 0700 by the first command that needs it."""
    return f"{STAGING_ROOT}/hardway-walk-{chapter}-{_RUN}"


def staged_names(files: Sequence[File]) -> dict[str, str]:
    """target path -> the name it waits under in the staging dir: its basename, or, where two files
    share one (/etc/etcd/ca.crt and /etc/kubernetes/pki/ca.crt), the whole path with / as -."""
    base = [f.path.rsplit("/", 1)[1] for f in files]
    return {f.path: (b if base.count(b) == 1 else f.path.strip("/").replace("/", "-")) for f, b in zip(files, base,
                                                                                                     strict=True)}


def is_text(data: bytes) -> bool:
    """Typed as a heredoc: UTF-8 without NUL or CR, ending in a newline (a heredoc always ends with one)."""
    if not data.endswith(b"\n") or b"\0" in data or b"\r" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def delimiter(text: str, base: str = "EOF") -> str:
    """A heredoc delimiter that no line of ``text`` equals (EOF, then EOF_1, EOF_2, ...)."""
    lines = set(text.splitlines())
    word, n = base, 0
    while word in lines:
        n += 1
        word = f"{base}_{n}"
    return word


def heredoc(target: str, data: bytes) -> str:
    """A command that writes ``data`` to ``target`` byte for byte: a quoted heredoc for text, base64 for
    the rest (never used for a secret: those are copied, see ``node_sections``)."""
    q = shlex.quote(target)
    if is_text(data):
        text = data.decode("utf-8")
        word = delimiter(text)
        return f"cat > {q} <<'{word}'\n{text}{word}"
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i:i + B64_WIDTH] for i in range(0, len(encoded), B64_WIDTH)] or [""]
    word = delimiter("\n".join(lines))
    return f"base64 -d > {q} <<'{word}'\n" + "\n".join(lines) + f"\n{word}"


def ssh_options(inv: Inventory) -> list[str]:
    """The options that make ssh and scp use the inventory's key and known_hosts, strictly (scp's port flag is
    -P, ssh's -p: given as an option both understand)."""
    ssh = inv.ssh
    opts = ["-o", f"Port={ssh.port}", "-o", f"UserKnownHostsFile={ssh.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    if ssh.key is not None:
        opts = ["-i", str(ssh.key), *opts]
    return opts


def login(inv: Inventory, node: Node, *, scp: bool = False) -> str:
    """user@host for ssh; scp needs an IPv6 address in brackets (its colon would start the path)."""
    host = str(node.address)
    return f"{inv.ssh.user}@[{host}]" if scp and ":" in host else f"{inv.ssh.user}@{host}"


def jumpbox_section(inv: Inventory, node: Node, chapter: str, files: Sequence[File],
                    sources: Mapping[str, Path], render: str = "") -> Section | None:
    """On the jumpbox: copy to ``node`` the files that are never printed (secrets) or too big to type
    (binaries), from where the jumpbox keeps them. ``render``: the command that writes the files whose
    source is the render's output (run first when one is copied). None if there is nothing to copy."""
    names = staged_names(files)
    copied = [(f, src) for f in files if (src := copy_source(f, sources)) is not None]
    if not copied:
        return None
    opts = " ".join(shlex.quote(o) for o in ssh_options(inv))
    where = login(inv, node)
    stage = staging_dir(chapter)
    rendered = any(f.source is None and not f.secret for f, _ in copied)
    cmds = [render] if render and rendered else []
    cmds.append(f"ssh {opts} {where} {shlex.quote(f'install -d -m 0700 {stage}')}")
    to = login(inv, node, scp=True)
    for f, src in copied:
        cmds.append(f"scp -q {opts} {shlex.quote(str(src))} {shlex.quote(f'{to}:{stage}/{names[f.path]}')}")
    return Section("jumpbox", f"on the jumpbox: copy {node.name} its keys and binaries (never printed)", cmds)


def copy_source(f: File, sources: Mapping[str, Path]) -> Path | None:
    """Where on the jumpbox ``f`` is copied from, if it is copied rather than typed: a binary from where
    the inventory has it, a secret from the PKI state, a program too big to type from the render."""
    if f.source is not None:
        return f.source
    if f.secret or f.size > TYPE_MAX_BYTES:
        src = sources.get(f.path)
        if src is None:  # every secret comes from the PKI state; a planner that broke that is a bug
            raise ValueError(f"{f.path}: a secret or big file without a source on the jumpbox")
        return src
    return None


def node_section(node: Node, chapter: str, files: Sequence[File], sources: Mapping[str, Path],
                 units: Sequence[str], *, no_block: bool = False, extra: Sequence[str] = ()) -> Section:
    """On ``node``, as root: type the text files, install every file with its mode and owner, then
    daemon-reload, enable and start the chapter's units in its order; ``extra``: the chapter's own
    commands (routes), before the units start."""
    names = staged_names(files)
    stage = staging_dir(chapter)
    q_stage = shlex.quote(stage)
    cmds: list[str] = []
    if files:
        dirs = sorted({f.path.rsplit("/", 1)[0] or "/" for f in files})
        cmds.append(f"install -d -m 0700 {q_stage}")
        cmds.append("mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
        for f in files:
            if copy_source(f, sources) is None:
                cmds.append(heredoc(f"{stage}/{names[f.path]}", f.data()))
        for f in files:
            cmds.append(f"install -m {f.mode:04o} -o {shlex.quote(f.owner)} -g {shlex.quote(f.group)} "
                        f"{shlex.quote(f'{stage}/{names[f.path]}')} {shlex.quote(f.path)}")
        cmds.append(f"rm -rf -- {q_stage}")
    cmds.extend(extra)
    if units:
        cmds.append("systemctl daemon-reload")
        cmds.append(systemctl_command("enable", *units))
        if no_block:  # Type=notify members come up only together: start each node's before waiting on any
            cmds.append("# --no-block: start it on every node before waiting; it is up once a quorum is")
        cmds.append(systemctl_command("start", *(["--no-block"] if no_block else []), *units))
    return Section(node.name, f"on {node.name}, as root", cmds)


def script(section: Section) -> str:
    """The section as one shell script, stopping at the first failing command (what a test types)."""
    return "set -e\n" + section.text() + "\n"
