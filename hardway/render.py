"""Templates to bytes, and the checks that the bytes mean what we meant.

* ``render(name, **context)``: one template of ``templates/`` under a Jinja Environment with
  ``StrictUndefined``; a missing value is a ``HardwayError`` naming template, line and variable.
* ``systemd_exec(argv)``: the ``systemd_exec`` filter. Unit templates never hold a command line:
  Python builds the argv list and this filter writes it, one argument per continuation line,
  quoted by systemd's own rules (systemd.service(5) "COMMAND LINES", systemd.syntax(7) "QUOTING",
  systemd.unit(5) "SPECIFIERS").
* ``lint_units(paths)``: the real ``systemd-analyze verify``; any stderr is a problem.
* ``exec_argv(unit)``: what systemd itself parsed from a unit's ``ExecStart=`` (for tests and checks).
* ``write_build(inv, state, out_dir)``: every planned file of every node under ``out_dir/<node>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from hardway.errors import HardwayError
from hardway.inventory import Inventory
from hardway.state import PkiState

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SYSTEMD_ANALYZE = "systemd-analyze"
# Where verify looks for the units ours depend on (sysinit.target, network-online.target, ...).
# Only the vendor directory: the host's /etc/systemd/system (masks, drop-ins, a packaged etcd
# enabled there) must not change the verdict on units meant for other machines.
VENDOR_UNIT_PATH = "/usr/lib/systemd/system"


# --------------------------------------------------------------------------------------------
# systemd command lines


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


# --------------------------------------------------------------------------------------------
# Templates


def _json(value: Any) -> str:
    """A JSON scalar or structure, also valid in YAML and (for strings) in TOML."""
    return json.dumps(value, sort_keys=True)


@cache
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # units and configs, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["systemd_exec"] = systemd_exec
    env.filters["json"] = _json
    return env


def render(name: str, /, *, templates_dir: Path = TEMPLATES_DIR, **context: Any) -> str:
    """Render ``templates/<name>``; a missing variable raises HardwayError naming template and variable."""
    env = environment(templates_dir)
    try:
        return env.get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        where = _template_line(exc, env, name)
        raise HardwayError(f"template {where}: {exc.message} (pass it in the render context)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise HardwayError(f"template {exc.name or name}:{exc.lineno}: syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise HardwayError(f"template {exc.name} not found under {templates_dir}") from None
    except jinja2.TemplateError as exc:
        raise HardwayError(f"template {name}: {exc.message}") from None


def _template_line(exc: BaseException, env: jinja2.Environment, name: str) -> str:
    """``name:line`` of the innermost template frame of ``exc`` (Jinja rewrites tracebacks so)."""
    found = name
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        try:
            rel = Path(filename).resolve().relative_to(Path(env.loader.searchpath[0]).resolve())  # type: ignore[union-attr]
        except (ValueError, AttributeError, IndexError):
            rel = None
        if rel is not None:
            found = f"{rel}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


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


def _verify(paths: Sequence[Path], debug: bool = False,
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
        proc, tmp = _verify(units)
        tmp.cleanup()
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        for line in lines:
            named = any(str(u) in line or line.startswith(f"{u.name}:") for u in units)
            problems.append(line if named else f"{', '.join(str(u) for u in units)}: {line}")
        if proc.returncode != 0 and not lines:
            problems.append(f"{', '.join(str(u) for u in units)}: systemd-analyze verify exited "
                            f"{proc.returncode}: {proc.stdout.strip()[-500:]}")
    return problems


_DUMP_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _parse_dump_words(text: str) -> list[str]:
    """Split systemd's dump of a command line (``quote_command_line``: bare words, or double-quoted
    ones with C escapes: ``\\t``, ``\\001``, ``\\"``, ``\\$``)."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        if text[i] == '"':
            i += 1
            buf = bytearray()
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                    octal = re.match(r"[0-7]{3}", text[i:i + 3])
                    hexa = re.match(r"x[0-9a-fA-F]{2}", text[i:i + 3])
                    if octal:
                        buf.append(int(octal.group(), 8))
                        i += 3
                        continue
                    if hexa:
                        buf.append(int(hexa.group()[1:], 16))
                        i += 3
                        continue
                    buf += _DUMP_ESCAPES.get(text[i], text[i]).encode()
                else:
                    buf += text[i].encode()
                i += 1
            if i >= n:
                raise HardwayError(f"cannot parse systemd's command line dump: {text!r}")
            i += 1
            words.append(buf.decode("utf-8", errors="surrogateescape"))
        else:
            j = text.find(" ", i)
            j = n if j < 0 else j
            words.append(text[i:j])
            i = j
    return words


_WHOLE_VARIABLE = re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]*$")


def _substitute(words: list[str]) -> list[str]:
    """systemd's exec-time variable step with no variables set (our units set none): ``$$`` is
    ``$``, ``${X}`` is empty, a word that is just ``$X`` disappears, ``$X`` inside a word stays."""
    out = []
    for word in words:
        if _WHOLE_VARIABLE.match(word):
            continue
        out.append(re.sub(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*\}", lambda m: "$" if m.group() == "$$" else "", word))
    return out


def exec_argv(unit: Path, directive: str = "ExecStart") -> list[list[str]]:
    """The argv lists systemd itself parses from ``directive`` of ``unit`` (via verify's debug dump).

    Specifiers and quoting are systemd's; then variables are substituted as the exec step does
    with no variables set (``$$`` becomes ``$``, ``${X}`` empty).
    """
    unit = Path(unit)
    proc, tmp = _verify([unit], debug=True)  # stub paths are mapped back to the real binary
    tmp.cleanup()
    commands: list[list[str]] = []
    seen = in_unit = in_directive = False
    for line in proc.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("-> Unit "):
            in_unit = stripped == f"-> Unit {unit.name}:"
            seen = seen or in_unit
            in_directive = False
        elif in_unit and stripped.startswith("-> "):
            in_directive = stripped == f"-> {directive}:"
        elif in_unit and in_directive and stripped.startswith("Command Line: "):
            words = _parse_dump_words(line.split("Command Line: ", 1)[1])
            commands.append([words[0], *_substitute(words[1:])])
    if not seen:
        raise HardwayError(f"systemd-analyze did not load {unit}: {proc.stderr.strip()[-500:]}")
    return commands


# --------------------------------------------------------------------------------------------
# build/<cluster>/<node>/


def _mkdirs(directory: Path) -> None:
    """Create ``directory`` and missing parents 0700 (``mkdir(parents=True)`` leaves parents 0755)."""
    if directory.is_dir():
        return
    _mkdirs(directory.parent)
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)  # mkdir's mode passes through the umask


def _write(path: Path, data: bytes, mode: int) -> None:
    _mkdirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        os.fchmod(fh.fileno(), mode)


def write_build(inv: Inventory, state: PkiState, out_dir: Path, node: str | None = None, *,
                cache_dir: Path | None = None) -> list[Path]:
    """Write every planned file of each node (or of ``node``) under ``out_dir/<node>/``.

    Each node directory is rebuilt from scratch in a sibling temp dir and swapped in, so files of
    an earlier render that the plan no longer holds disappear. Directories are 0700, secret files
    0600, others their planned mode. Binaries are listed in ``manifest.json`` (sha256, source) but
    not copied. Same inventory and same PKI give the same bytes. Units are linted with
    systemd-analyze in the staging dir: a rejected unit raises and the previous build stays.
    """
    from hardway import plan

    names = [inv.node(node).name] if node else [n.name for n in inv.nodes]
    plans = {name: plan.node_files(inv, name, state, cache_dir=cache_dir) for name in names}
    out_dir = Path(out_dir)
    if not out_dir.exists():  # a directory the user chose and made keeps its own mode
        out_dir.mkdir(parents=True, mode=0o700)
        os.chmod(out_dir, 0o700)  # holds keys (node dirs below are 0700 in any case)
    written: list[Path] = []
    for name, files in plans.items():
        final = out_dir / name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))  # 0700
        try:
            entries = []
            paths: list[Path] = []
            for f in files:
                entry = f.manifest_entry()
                if f.source is not None:
                    entry["source"] = str(f.source)
                else:
                    target = f.path.lstrip("/")
                    _write(staging / target, f.data(), 0o600 if f.secret else f.mode)
                    paths.append(final / target)
                entries.append(entry)
            entries.sort(key=lambda e: str(e["path"]))
            manifest = json.dumps(entries, indent=2, sort_keys=True).encode() + b"\n"
            _write(staging / "manifest.json", manifest, 0o644)
            paths.append(final / "manifest.json")
            problems = lint_units(sorted((staging / "etc/systemd/system").glob("*.service")))
            if problems:
                shown = "; ".join(p.replace(str(staging), str(final)) for p in problems[:3])
                raise HardwayError(f"render: systemd-analyze verify rejects {name}'s units ({shown}); "
                                   f"{final} was left as it was")
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out_dir))
                os.rename(final, old / name)
            os.rename(staging, final)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        written.extend(paths)
    return written
