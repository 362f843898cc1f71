"""Typed reading of one YAML document in which every value knows its file, line and field path.

The YAML is composed into nodes, not loaded into plain dicts, so a value keeps its line and its
source text. Each problem is one ``FieldError``::

    inventory/x.yaml:14: nodes[2].address: '10.0.0.300' is not an IPv4 or IPv6 address

What YAML itself would do silently is refused here: ``on`` read as true, ``0600`` as 384 (octal),
``1:30`` as 90 (base 60), ``0x1bb`` as 443. A whole-number field takes only a plain decimal number,
and a message quotes what the user wrote, cut to about 80 characters, never the parser's internals.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hardway.errors import HardwayError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An inventory is at most 6 levels deep (pki.extra_sans.<family>[i]); YAML's composer recurses
# per level, so a few hundred `[` would otherwise end in Python's RecursionError.
MAX_DEPTH = 32
SHOWN = 60  # characters of a user's value quoted back in a message

_DECIMAL = re.compile(r"^-?(0|[1-9][0-9]*)$")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"


class FieldError(HardwayError):
    """A bad value in a YAML file: the message is ``file:line: field.path: problem; fix``."""


def shown(value: object, limit: int = SHOWN) -> str:
    """``value`` quoted for a message, cut to about ``limit`` characters (a 10 MB name stays short)."""
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}…' ({size} characters)" if isinstance(value, str) else f"{text[:limit]}… ({size} characters)"


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses documents nested deeper than MAX_DEPTH, with the line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels (an inventory needs at most 6); "
                                "close the brackets or remove the extra levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1


def _syntax_hint(problem: str) -> str:
    if "'\\t'" in problem:
        return "; indent with spaces, not tabs"
    if "another document" in problem:
        return "; the file holds one document: remove the '---' line and what follows, or merge it"
    return ""


def compose(text: str, source: str) -> yaml.Node | None:
    """The single YAML document in ``text`` as nodes; a syntax problem is one line with its line number."""
    try:
        loader = _DepthLimitedLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        # Whole: "expected a single document in the stream, but found another document", never just
        # the second half; and without the snippet PyYAML appends (it names "<unicode string>").
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        context = exc.context or ""
        if context.startswith("while") and exc.context_mark and exc.problem_mark \
                and exc.context_mark.line != exc.problem_mark.line:
            context += f" (line {exc.context_mark.line + 1})"
        problem = ", ".join(p for p in (context, exc.problem or "") if p) or type(exc).__name__
        problem = problem if len(problem) <= 2 * SHOWN else problem[: 2 * SHOWN] + "…"
        raise FieldError(f"{source}:{line}: YAML syntax error: {problem}{_syntax_hint(problem)}") from None
    except yaml.reader.ReaderError as exc:  # a control character; its position counts characters
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise FieldError(f"{source}:{line}: character U+{ord(char):04X} is not allowed in YAML "
                         "(a control character); remove it") from None
    except yaml.YAMLError as exc:
        raise FieldError(f"{source}:1: YAML error: {shown(str(exc), 2 * SHOWN)}") from None
    except RecursionError:  # belt and braces: MAX_DEPTH stops the composer long before this
        raise FieldError(f"{source}:1: YAML nested too deeply; an inventory needs at most 6 levels") from None


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text of a file; an undecodable byte is reported by line, not by byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FieldError(f"{source}:{line}: byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the file "
                         "as UTF-8") from None


def _construct(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node)


def _describe(value: Any, node: yaml.Node | None = None) -> str:
    """``value`` as a message names it; a number is quoted as written (``0022``, not 18)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        written = node.value if isinstance(node, yaml.ScalarNode) else str(value)
        read = "" if written == str(value) else f" (YAML 1.1 reads it as {value})"
        return f"number {shown(written)}{read}"
    if isinstance(value, str):
        return f"string {shown(value)}"
    return type(value).__name__


def _kind(node: yaml.Node | None) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    try:
        return _describe(_construct(node), node)
    except yaml.YAMLError:
        return f"a value tagged {shown(node.tag)}"


def _whole_number_spelling(node: yaml.ScalarNode, value: int) -> str | None:
    """Why a YAML 1.1 integer is not a plain decimal (``06443`` is octal 3363), or None if it is."""
    text = node.value
    if node.tag != _INT_TAG or node.style is not None or _DECIMAL.match(text):
        return None
    plain = text.replace("_", "").lstrip("+")
    if ":" in text:
        kind = "a base-60 number"
    elif plain.lstrip("-").lower().startswith("0x"):
        kind = "a hexadecimal number"
    elif plain.lstrip("-").lower().startswith("0b"):
        kind = "a binary number"
    elif plain.lstrip("-").startswith("0") and len(plain.lstrip("-")) > 1:
        kind = "an octal number"
        digits = plain.lstrip("-").lstrip("0") or "0"
        if digits.isdigit():
            return f"{shown(text)} is {kind} in YAML 1.1 (read as {value}); write the plain number {digits}"
    else:
        kind = "not a plain number"
    return f"{shown(text)} is {kind} in YAML 1.1 (read as {value}); write the plain number {value}"


class Field:
    """A cursor over one composed node: its source, its line and its dotted path."""

    def __init__(self, source: str, node: yaml.Node | None, path: str, parent_line: int = 1) -> None:
        self.source = source
        self.node = node
        self.path = path
        self.line = node.start_mark.line + 1 if node is not None else parent_line

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}: {self.path or '(top level)'}"

    def fail(self, message: str) -> FieldError:
        return FieldError(f"{self.where}: {message}")

    @property
    def present(self) -> bool:
        return self.node is not None and not (isinstance(self.node, yaml.ScalarNode) and self.node.tag == _NULL_TAG)

    def child(self, key: str | int, node: yaml.Node | None) -> Field:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            if not _PLAIN_KEY.fullmatch(key):  # quoted, so a key with spaces or escapes cannot garble the line
                key = shown(key, 40)
            key = key if len(key) <= 40 else key[:40] + "…"
            path = f"{self.path}.{key}" if self.path else key
        return Field(self.source, node, path, self.line)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    def describe(self) -> str:
        """What the value is, as a message names it (``number 0022 (YAML 1.1 reads it as 18)``)."""
        return _kind(self.node)

    def mapping(self, allowed: tuple[str, ...], what: str = "field") -> dict[str, Field]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.fail(f"expected a mapping with keys {', '.join(allowed)}, got {_kind(self.node)}")
        out: dict[str, Field] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = self.child(str(key) if key is not None else f"({_kind(key_node)})", key_node)
            if key not in allowed:
                from difflib import get_close_matches

                close = get_close_matches(str(key), allowed, n=1) if key is not None and len(key) < 100 else []
                guess = f"did you mean {close[0]}? " if close else ""
                raise where.fail(f"unknown {what}; {guess}expected one of: {', '.join(allowed)}")
            if key in out:
                raise where.fail("given twice; keep one")
            out[key] = self.child(key, value_node)
        return out

    def get(self, fields: dict[str, Field], key: str) -> Field:
        return fields.get(key) or self.child(key, None)

    def items(self) -> Iterator[Field]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.fail(f"expected a list, got {_kind(self.node)}")
        for i, item in enumerate(self.node.value):
            yield self.child(i, item)

    def scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.fail(f"expected a single value, got {_kind(self.node)}")
        try:
            value = _construct(self.node)
        except yaml.YAMLError:
            raise self.fail(f"cannot read {shown(self.node.value)} tagged {shown(self.node.tag)}; "
                            "remove the tag") from None
        if isinstance(value, str):
            lone = _SURROGATE.search(value)
            if lone:  # an escape such as "\ud800" that is half of a character: no file name or URL takes it
                raise self.fail(f"{shown(value)} contains \\u{ord(lone.group()):04x}, half of a character; remove it")
        return value

    def text(self, what: str) -> str:
        """The value as the user wrote it, for fields read from text (addresses, CIDRs, names):
        ``1:2:3:4:5:6:7:8`` is an IPv6 address here, not YAML 1.1's base-60 integer."""
        if not self.present:
            raise self.fail("is required")
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"expected {what}, got {_describe(value, self.node)}")
        assert isinstance(self.node, yaml.ScalarNode)
        return self.node.value

    def required(self) -> Field:
        if not self.present:
            raise self.fail("is required")
        return self

    def string(self, default: str | None = None) -> str:
        if not self.present:
            if default is None:
                raise self.fail("is required")
            return default
        value = self.scalar()
        if not isinstance(value, str):
            hint = " (YAML reads it as a boolean: quote it)" if isinstance(value, bool) else \
                "; quote it" if isinstance(value, int | float) else ""
            raise self.fail(f"expected a string, got {_describe(value, self.node)}{hint}")
        if not value.strip():
            raise self.fail("must not be empty")
        return value

    def integer(self, default: int, low: int, high: int) -> int:
        if not self.present:
            return default
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            digits = value.strip().replace("_", "") if isinstance(value, str) else ""
            hint = f"; write {int(digits)} (a plain number, no quotes)" if re.fullmatch(r"[-+]?[0-9]+", digits) else ""
            raise self.fail(f"expected a whole number from {low} to {high}, got {_describe(value, self.node)}{hint}")
        assert isinstance(self.node, yaml.ScalarNode)
        spelling = _whole_number_spelling(self.node, value)
        if spelling:
            raise self.fail(spelling)
        if not low <= value <= high:
            raise self.fail(f"{value} is out of range; use a number from {low} to {high}")
        return value

    def choice(self, options: tuple[str, ...], default: str) -> str:
        value = self.string(default)
        if value not in options:
            raise self.fail(f"{shown(value)} is not one of: {', '.join(options)}")
        return value

    def ip(self) -> IPAddress:
        text = self.text("an IPv4 or IPv6 address")
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            raise self.fail(f"{shown(text)} is not an IPv4 or IPv6 address") from None

    def cidr(self) -> IPNetwork:
        text = self.text("a CIDR such as 10.32.0.0/24")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.fail(f"{shown(text)} is not a CIDR such as 10.32.0.0/24") from None
        if "/" not in text:
            raise self.fail(f"{shown(text)} has no prefix length; write it as a CIDR such as {net}")
        if net.network_address != ipaddress.ip_interface(text).ip:
            raise self.fail(f"{shown(text)} has host bits set; the network is {net}")
        return net

    def path_value(self, base: Path, default: str | None = None) -> Path | None:
        if not self.present and default is None:
            return None
        text = self.string(default)
        if "\x00" in text:
            raise self.fail("contains a NUL character")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (base / p)
