"""What systemd itself parsed from a unit's ExecStart= (via `systemd-analyze verify`'s debug dump).

Tests compare it with the argv hardway meant, so quoting bugs show as a different argv.
"""

from __future__ import annotations

import re
from pathlib import Path

from hardway.errors import HardwayError
from hardway.systemd import analyze_verify

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
    proc, tmp = analyze_verify([unit], debug=True)  # stub paths are mapped back to the real binary
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
