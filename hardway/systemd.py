"""systemd: command lines quoted by its rules, unit text read back, and the real lint.

* ``systemd_exec(argv)``: the ``systemd_exec`` template filter. Unit templates never hold a command
  line: Python builds the argv list and this filter writes it, one argument per continuation line,
  quoted by systemd's own rules (systemd.service(5) "COMMAND LINES", systemd.syntax(7) "QUOTING",
  systemd.unit(5) "SPECIFIERS").
* ``exec_words(unit_text)`` / ``unit_flags``: the words of a unit's ExecStart as a person reads them
  (continuations joined), also from a hand-broken unit: checks and preflight use them.
* ``lint_units(paths)``: the real ``systemd-analyze verify``; any stderr is a problem.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import jinja2

from hardway.errors import HardwayError

SYSTEMD_ANALYZE = "systemd-analyze"
# Where verify looks for the units ours depend on (sysinit.target, network-online.target, ...).
# Only the vendor directory: the host's /etc/systemd/system (masks, drop-ins, a packaged etcd
# enabled there) must not change the verdict on units meant for other machines.
VENDOR_UNIT_PATH = "/usr/lib/systemd/system"


# A word needs double quotes if systemd would otherwise split it (whitespace), unquote it (quotes),
# unescape it (backslash), take it as a command separator (";") or, at the start of a continuation
# line, as a comment ("#" or ";": systemd.syntax(7) drops comment lines inside a continued line).
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;#]|[\x00-\x1f\x7f]""")
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a",
              "\b": "\\b", "\f": "\\f", "\v": "\\v"}
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._+/@:,=-]*$")


def systemd_quote(word: str) -> str:
    """One argument as systemd must read it back unchanged.

    ``%`` becomes ``%%`` (specifiers expand inside quotes too) and ``$`` becomes ``$$`` (else
    ``$X``/``${X}`` is environment substitution at exec time). A word with whitespace, quotes,
    backslashes, ``;``, ``#`` or control characters, and the empty word, is wrapped as a whole in
    double quotes with C escapes inside (``\\\\``, ``\\"``, ``\\n``, ``\\xNN``).
    """
    if isinstance(word, jinja2.Undefined):
        str(word)  # StrictUndefined raises here, naming the variable
    if not isinstance(word, str):
        raise HardwayError(f"systemd_exec: argument {word!r} is a {type(word).__name__}, not a string")
    text = word.replace("%", "%%").replace("$", "$$")
    if word and not _NEEDS_QUOTES.search(word):
        return text
    out = []
    for ch in text:
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def systemd_exec(argv: Sequence[str]) -> str:
    """The value of ``ExecStart=`` for ``argv``: the binary, then one quoted argument per line.

    Every line but the last ends in `` \\`` with nothing after the backslash, and each argument
    line is indented two spaces, so no argument can be dropped by a broken continuation.
    """
    if isinstance(argv, jinja2.Undefined):
        argv = list(argv)  # StrictUndefined raises here, naming the variable
    if isinstance(argv, str) or not isinstance(argv, Sequence):
        raise HardwayError(f"systemd_exec takes an argv list (binary, then flags), not {type(argv).__name__}")
    if not argv:
        raise HardwayError("systemd_exec: empty argv")
    binary = argv[0]
    if not isinstance(binary, str) or not _PLAIN_PATH.match(binary):
        raise HardwayError(
            f"systemd_exec: the binary {binary!r} must be an absolute path without spaces, quotes, "
            "'%' or '$' (systemd reads prefixes and specifiers there)"
        )
    return " \\\n  ".join([binary, *(systemd_quote(a) for a in argv[1:])])


def exec_words(unit_text: str) -> list[str]:
    """The words of a unit's ExecStart, continuations joined (a hand-broken unit still yields words)."""
    joined = re.sub(r"\\\n\s*", " ", unit_text)
    line = next((ln for ln in joined.splitlines() if ln.startswith("ExecStart=")), "")
    try:
        return shlex.split(line.removeprefix("ExecStart="))
    except ValueError:
        return line.split()


def unit_flags(unit_text: str) -> list[str]:
    """The --flags of a unit's ExecStart, without their values."""
    return [tok.split("=", 1)[0] for tok in exec_words(unit_text) if tok.startswith("--")]


# --------------------------------------------------------------------------------------------
# Lint: the real systemd-analyze verify


def _analyze() -> str:
    found = shutil.which(SYSTEMD_ANALYZE)
    if found is None:
        raise HardwayError("systemd-analyze not found: install the `systemd` package (scripts/setup.sh does)")
    return found


def _stub_binaries(text: str, stub_root: Path) -> tuple[str, dict[str, str]]:
    """Point each ``Exec*=`` binary missing on this machine at an empty executable stub.

    Why not ``--root``: verify then looks for *every* unit (sysinit.target, ...) inside that root,
    so it would need a copy of a whole unit tree. Swapping only the binary path keeps every other
    byte of the unit, and so every line number, while verify still checks that the first word
    is an absolute path it could run. The stub mirrors the path (``<tmp>/usr/local/bin/etcd``) and
    messages get the real path back.
    """
    mapping: dict[str, str] = {}
    out: list[str] = []
    continued = False
    for line in text.splitlines(keepends=True):
        if not continued:
            m = re.match(r"^(\s*Exec[A-Za-z]+\s*=\s*[-@:+!|]*)(/[^\s\"']+)", line)
            if m and not os.access(m.group(2), os.X_OK):
                stub = stub_root / m.group(2).lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_bytes(b"")
                stub.chmod(0o755)
                mapping[str(stub)] = m.group(2)
                line = m.group(1) + str(stub) + line[m.end():]
        continued = line.rstrip("\r\n").endswith("\\") and not line.lstrip().startswith(("#", ";"))
        out.append(line)
    return "".join(out), mapping


def analyze_verify(paths: Sequence[Path], debug: bool = False,
            ) -> tuple[subprocess.CompletedProcess[str], tempfile.TemporaryDirectory[str]]:
    """Run verify on copies of ``paths`` (same names, one directory, binaries stubbed)."""
    tmp = tempfile.TemporaryDirectory(prefix="hardway-verify-")
    root = Path(tmp.name)
    unit_dir, stub_root = root / "units", root / "stubs"
    unit_dir.mkdir()
    replacements: dict[str, str] = {str(unit_dir): "", str(root): ""}
    copies = []
    for p in paths:
        if (unit_dir / p.name).exists():
            raise HardwayError(f"lint_units: two units named {p.name} in one directory group")
        text, mapping = _stub_binaries(p.read_text(encoding="utf-8"), stub_root)
        (unit_dir / p.name).write_text(text, encoding="utf-8")
        copies.append(str(unit_dir / p.name))
        replacements.update(mapping)
        replacements[str(unit_dir / p.name)] = str(p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env.update(SYSTEMD_UNIT_PATH=VENDOR_UNIT_PATH, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C",
               SYSTEMD_LOG_LEVEL="debug" if debug else "info", SYSTEMD_LOG_TARGET="console")
    # --man=no: no man pages are installed on the nodes' behalf; --generators=false: generators
    # describe this machine, not the node, and need privileges.
    cmd = [_analyze(), "verify", "--man=no", "--generators=false", "--recursive-errors=yes", *copies]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        tmp.cleanup()
        raise HardwayError("systemd-analyze verify did not finish in 120 s") from None
    for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        if old:
            proc.stdout = proc.stdout.replace(old, new)
            proc.stderr = proc.stderr.replace(old, new)
    return proc, tmp


def lint_units(paths: Iterable[Path]) -> list[str]:
    """Problems ``systemd-analyze verify`` finds in the unit files ``paths``; empty means clean.

    Units are verified per directory, together (so ``Requires=containerd.service`` finds its
    sibling), as copies under their own names. Any line on stderr is a problem: verify exits 0
    on warnings such as "Ignoring unknown escape sequences", which still mean a changed argv.
    """
    groups: dict[Path, list[Path]] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise HardwayError(f"lint_units: {p} does not exist")
        groups.setdefault(p.resolve().parent, []).append(p)
    problems: list[str] = []
    for _, units in sorted(groups.items()):
        proc, tmp = analyze_verify(units)
        tmp.cleanup()
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        for line in lines:
            named = any(str(u) in line or line.startswith(f"{u.name}:") for u in units)
            problems.append(line if named else f"{', '.join(str(u) for u in units)}: {line}")
        if proc.returncode != 0 and not lines:
            problems.append(f"{', '.join(str(u) for u in units)}: systemd-analyze verify exited "
                            f"{proc.returncode}: {proc.stdout.strip()[-500:]}")
    return problems
