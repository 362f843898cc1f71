"""Facts: what hardway reads from a node, as data (after pyinfra's facts).

A fact is a name, the read-only shell command that asks it, and a pure parser of that command's
output. ``gather`` sends many facts to a node in one round trip (every exec costs a session on
the node) and parses each answer; parsers are tested on recorded outputs (tests/data/facts/),
and the remote fake answers by fact name, so the logic that judges facts runs without a machine.

Generic facts live here; a chapter keeps its own next to its code.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hardway.errors import HardwayError

T = TypeVar("T")


@dataclass(frozen=True)
class FactOutput:
    """What a fact's command printed (stdout with stderr merged) and its exit code."""

    stdout: str
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, eq=False)
class Fact(Generic[T]):
    """``name``: what is asked (the fake answers by it); ``args``: about what (paths, a unit); ``alone``: a
    measurement that other work would disturb (the fsync probe): a parallel gather runs it after the rest."""

    name: str
    shell: str
    parse: Callable[[FactOutput], T] = field(repr=False)
    args: tuple[Any, ...] = ()
    alone: bool = False

    @property
    def key(self) -> str:
        """Unique within a gather, one word: the name plus a digest of the arguments."""
        if not self.args:
            return self.name
        return f"{self.name}#{hashlib.sha256(repr(self.args).encode()).hexdigest()[:10]}"


class FactValues:
    """The parsed answers of one gather, looked up by the Fact object (or its key)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, fact: Fact[T] | str) -> T:
        return self._values[fact if isinstance(fact, str) else fact.key]

    def __contains__(self, fact: Fact[Any] | str) -> bool:
        return (fact if isinstance(fact, str) else fact.key) in self._values

    def merged(self, other: FactValues) -> FactValues:
        return FactValues({**self._values, **other._values})

    def answered(self) -> FactValues:
        """Without the facts ``only_where`` did not ask."""
        return FactValues({k: v for k, v in self._values.items() if v is not NOT_ASKED})


class _NotAsked:
    def __repr__(self) -> str:
        return "NOT_ASKED"


NOT_ASKED: Any = _NotAsked()
_NOT_ASKED_MARK = "@@hardway-not-asked@@"


def only_where(condition: str, fact: Fact[T]) -> Fact[T]:
    """``fact`` (same name, same key), asked only where the shell test ``condition`` holds; elsewhere its
    value is NOT_ASKED, which ``FactValues.answered`` drops."""

    def parse(out: FactOutput) -> T:
        return NOT_ASKED if out.stdout.strip() == _NOT_ASKED_MARK else fact.parse(out)

    return Fact(fact.name, f"{condition} || {{ echo '{_NOT_ASKED_MARK}'; exit 0; }}\n{fact.shell}", parse, fact.args,
                fact.alone)


def gather(remote: Any, facts: Iterable[Fact[Any]], timeout: int | None = None, *, parallel: bool = False,
           ) -> FactValues:
    """Ask ``remote`` (a hardway.remote.Remote) every fact in one round trip and parse the answers.

    A parser that cannot read an answer raises HardwayError naming node and fact: it means the
    node is not what hardway expects (another distribution, a changed tool), never a crash.
    """
    unique = list({f.key: f for f in facts}.values())
    if not unique:
        return FactValues({})
    raw = remote.gather(unique, timeout=timeout, parallel=True) if parallel else remote.gather(unique, timeout=timeout)
    values: dict[str, Any] = {}
    for f in unique:
        out = raw.get(f.key, FactOutput("", 255))
        try:
            values[f.key] = f.parse(out)
        except HardwayError as exc:  # the parser's own words (a broken state file names its fix)
            raise HardwayError(f"{remote.node.name}: {exc}") from None
        except (ValueError, LookupError, TypeError) as exc:
            raise HardwayError(f"{remote.node.name}: cannot read fact {f.name} ({type(exc).__name__}: {exc}); "
                               f"its output began {out.stdout[:120]!r}") from None
    return FactValues(values)


def _quoted(paths: Sequence[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


# --- generic facts ---------------------------------------------------------------------------


def _parse_arch(out: FactOutput) -> str:
    return out.stdout.strip()


ARCH: Fact[str] = Fact("arch", "uname -m", _parse_arch)


def _per_path(paths: Sequence[str], read: Callable[[str], tuple[str, T] | None]) -> Callable[
        [FactOutput], dict[str, T | None]]:
    """A parser for a command printing one line per existing path: ``read`` turns a line into
    (path, value); paths without a line are None (missing)."""

    def parse(out: FactOutput) -> dict[str, T | None]:
        found: dict[str, T | None] = dict.fromkeys(paths)
        for line in out.stdout.splitlines():
            got = read(line)
            if got is not None and got[0] in found:
                found[got[0]] = got[1]
        return found

    return parse


def _hash_line(line: str) -> tuple[str, str] | None:
    digest, _, name = line.partition("  ")
    return (name, digest) if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def file_hashes(paths: Sequence[str], stamped: Mapping[str, tuple[str, int, int]] | None = None,
                ) -> Fact[dict[str, str | None]]:
    """sha256 of each path, None where missing. A path in ``stamped`` (path -> sha256, size, mtime
    hardway gave it) whose size and mtime still match is not read: its sha256 is the recorded one."""
    stamped = dict(stamped or {})
    read = tuple(p for p in paths if p not in stamped)
    shell = [f"sha256sum -- {_quoted(read)} 2>/dev/null"] if read else []
    for path, (sha, size, mtime) in stamped.items():
        q = shlex.quote(path)
        shell.append(f"if [ \"$(stat -c '%s %Y' -- {q} 2>/dev/null)\" = '{size} {mtime}' ]; then echo '{sha}  '{q}; "
                     f"else sha256sum -- {q} 2>/dev/null; fi")
    return Fact("file_hashes", "; ".join([*shell, "true"]), _per_path(tuple(paths), _hash_line),
                (tuple(paths), tuple(sorted(stamped.items()))))


@dataclass(frozen=True)
class FileStat:
    mode: int
    owner: str
    group: str
    mtime: int
    changed: int = 0  # ctime: when the file was last written or replaced (no tool can set it back)


def _stat_line(line: str) -> tuple[str, FileStat] | None:
    parts = line.split(" ", 5)
    if len(parts) != 6:
        return None
    return parts[5], FileStat(int(parts[0], 8), parts[1], parts[2], int(parts[3]), int(parts[4]))


def file_stats(paths: Sequence[str]) -> Fact[dict[str, FileStat | None]]:
    """Mode, owner, group, mtime and ctime (epoch seconds, node clock) of each path, None where missing."""
    paths = tuple(paths)
    shell = f"stat -c '%a %U %G %Y %Z %n' -- {_quoted(paths)} 2>/dev/null; true" if paths else "true"
    return Fact("file_stats", shell, _per_path(paths, _stat_line), paths)


@dataclass(frozen=True)
class UnitState:
    active: str  # ActiveState: active, inactive, failed, activating, ...
    since: int | None  # ActiveEnterTimestamp, epoch seconds on the node's clock
    enabled: str  # UnitFileState: enabled, disabled, masked, "" (no unit file)
    main_pid: int = 0


def parse_unit_states(out: FactOutput, units: Sequence[str]) -> dict[str, UnitState]:
    states = {u: UnitState("unknown", None, "") for u in units}
    for block in out.stdout.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = props.get("Id", "").removesuffix(".service")
        stamp = props.get("ActiveEnterTimestamp", "").lstrip("@")
        pid = props.get("MainPID", "0")
        if name in states:
            states[name] = UnitState(props.get("ActiveState", "unknown"), int(stamp) if stamp.isdigit() else None,
                                     props.get("UnitFileState", ""), int(pid) if pid.isdigit() else 0)
    return states


def unit_states(units: Sequence[str]) -> Fact[dict[str, UnitState]]:
    units = tuple(units)
    cmd = ("systemctl show --timestamp=unix -p Id,ActiveState,ActiveEnterTimestamp,UnitFileState,MainPID -- "
           + _quoted([f"{u}.service" for u in units])) if units else "true"
    return Fact("unit_states", cmd, lambda out: parse_unit_states(out, units), units)


def parse_listeners(out: FactOutput) -> dict[int, tuple[int, str]]:
    """port -> (pid, command) of the process listening on it (TCP), from ``ss -Htlnp``."""
    found: dict[int, tuple[int, str]] = {}
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        port = cols[3].rsplit(":", 1)[-1]
        if port.isdigit():
            m = re.search(r'\("([^"]+)",pid=(\d+)', line)
            found.setdefault(int(port), (int(m.group(2)), m.group(1)) if m else (0, "unknown process"))
    return found


LISTENERS: Fact[dict[int, tuple[int, str]]] = Fact("listeners", "ss -Htlnp 2>/dev/null || true", parse_listeners)


def _parse_text(out: FactOutput) -> str:
    return out.stdout


def _file_text(out: FactOutput) -> str | None:
    return out.stdout if out.ok else None


def file_text(path: str) -> Fact[str | None]:
    """A small file's text (a certificate, a unit); None if it is missing. Never for a secret."""
    return Fact("file_text", f"cat -- {shlex.quote(path)}", _file_text, (path,))


def journal_since_start(unit: str, lines: int = 300) -> Fact[str]:
    """The unit's journal since it last started, so a repaired service is judged afresh.

    By the unit's invocation ID, not by time: ``--since`` counts whole seconds, and a line logged
    in the second before a restart would otherwise count against the new run.
    """
    q = shlex.quote(unit)
    return Fact("journal", f"i=$(systemctl show -p InvocationID --value {q}); "
                           f"if [ -n \"$i\" ]; then journalctl _SYSTEMD_INVOCATION_ID=$i + INVOCATION_ID=$i "
                           f"--no-pager -o cat | tail -n 2000; else journalctl -u {q} -n {lines} --no-pager -o cat; fi",
                _parse_text, (unit,))


def unit_lint(paths: Sequence[str]) -> Fact[str]:
    """What the node's own systemd-analyze says about unit files (stderr only; empty = clean)."""
    paths = tuple(paths)
    return Fact("unit_lint", f"systemd-analyze verify {_quoted(paths)} 2>&1 >/dev/null", _parse_text, paths)


_PART = "@@hardway-part@@"


def _parts(out: FactOutput, facts: Sequence[Fact[Any]]) -> dict[str, Any]:
    texts: dict[int, list[str]] = {}
    codes: dict[int, int] = {}
    current = None
    for line in out.stdout.splitlines(keepends=True):
        if line.startswith(_PART):
            _, index, rc = line.split()
            current = int(index)
            codes[current] = int(rc)
            texts[current] = []
        elif current is not None:
            texts[current].append(line)
    # each part ends with the newline the script adds after it, then (maybe) its own last newline
    return {f.key: f.parse(FactOutput("".join(texts.get(i, [])).removesuffix("\n").removesuffix("\n"),
                                      codes.get(i, 255)))
            for i, f in enumerate(facts)}


def concurrently(name: str, facts: Sequence[Fact[Any]]) -> Fact[dict[str, Any]]:
    """One fact whose parts run at the same time on the node (each a slow read-only probe: a
    kubectl, a curl, an etcdctl); its value maps each part's key to its parsed answer."""
    facts = tuple(facts)
    runs = " ".join(f"( ( {f.shell.rstrip('; ')}\n) >\"$d/{i}\" 2>&1; echo $? >\"$d/{i}.rc\" ) &"
                    for i, f in enumerate(facts))
    show = "; ".join(f"printf '{_PART} {i} %s\\n' \"$(cat \"$d/{i}.rc\")\"; cat \"$d/{i}\"; echo"
                     for i in range(len(facts)))
    script = f"d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; {runs} wait; {show}"
    return Fact(name, script, lambda out: _parts(out, facts), facts)  # its args are its parts (the fake answers each)


def parts_output(outputs: Sequence[FactOutput]) -> FactOutput:
    """What a ``concurrently`` fact prints for these part outputs (the remote fake composes it)."""
    text = "".join(f"{_PART} {i} {o.exit_code}\n{o.stdout}\n" for i, o in enumerate(outputs))
    return FactOutput(text, 0)
