"""What the pinned Kubernetes server components accept: flags and config-file keys, kept as data.

The data lives in ``hardway/data/kubernetes/<minor>/<component>.yaml`` (with its provenance: which
reference page, which commit, how the version was established). ``load(component, version)`` gives a
``Spec`` that answers: which of these flags are unknown or deprecated (``unknown``, ``deprecated``),
is this value well formed for that flag (``validate``), what is wrong with a whole command line
(``check_argv``) and with a config file (``check_config``).

Readers: the stand-ins (``hardway.standins`` inlines this module into each stand-in program, which runs
on nodes with Debian's python3 and without hardway: so only the standard library is imported at module
level), the chapters' preflight, and the test that checks every flag hardway renders.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
# Switches: a bare --name means true; a value must be attached with '=' (pflag's NoOptDefVal).
SWITCH_TYPES = ("bool", "version")

_BOOLS = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
_UNIT = r"(?:ns|us|µs|ms|s|m|h)"
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"^[-+]?(?:0|(?:{_NUM}{_UNIT})+)$")  # Go's time.ParseDuration
_QUANTITY = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_INT_BITS = {"int": 64, "int32": 32, "int64": 64, "Level": 32, "uint": 64}


def _norm(name: str) -> str:
    """pflag as Kubernetes configures it: leading dashes off, '_' and '-' are the same separator."""
    return name.lstrip("-").split("=", 1)[0].replace("_", "-")


@dataclass(frozen=True)
class Flag:
    name: str
    type: str
    enum: tuple[str, ...] = ()
    format: str = ""
    deprecated: str = ""
    rejected: str = ""  # still registered, but the binary refuses it
    short: str = ""

    @property
    def takes_value(self) -> bool:
        """True if ``--name VALUE`` consumes the next argument (switches need ``--name=value``)."""
        return self.type not in SWITCH_TYPES


@dataclass(frozen=True)
class Issue:
    """One thing wrong with a command line. Only ``deprecated`` issues are not fatal."""

    flag: str
    kind: str  # unknown | deprecated | rejected | malformed | missing-value | argument
    message: str

    @property
    def fatal(self) -> bool:
        return self.kind != "deprecated"


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str
    enum: tuple[str, ...] = ()
    format: str = ""
    since: str = ""  # first minor version that has this key, when later than the data's
    rejected: str = ""
    keys: Mapping[str, ConfigKey] | None = None  # nested keys that are checked too


@dataclass(frozen=True)
class ConfigSpec:
    api_version: str
    kind: str
    keys: Mapping[str, ConfigKey]


@dataclass(frozen=True)
class Spec:
    component: str
    version: str
    flags: Mapping[str, Flag]
    config: ConfigSpec | None = None
    complete: bool = True
    raw: Mapping = field(default_factory=dict, repr=False, compare=False)

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping) -> Spec:
        notes = data.get("deprecation_notes") or {}
        flags: dict[str, Flag] = {}
        for name, entry in (data.get("flags") or {}).items():
            e = {"type": entry} if isinstance(entry, str) else dict(entry)
            dep = str(e.get("deprecated", "") or "")
            if dep.startswith("@"):
                dep = notes[dep[1:]]
            flags[_norm(name)] = Flag(name=name, type=str(e["type"]), enum=tuple(str(v) for v in e.get("enum", ())),
                                      format=e.get("format", ""), deprecated=dep, rejected=e.get("rejected", ""),
                                      short=e.get("short", ""))
        config = None
        if data.get("config"):
            c = data["config"]
            config = ConfigSpec(api_version=c["apiVersion"], kind=c["kind"], keys=_config_keys(c["keys"]))
        return cls(component=data["component"], version=str(data["version"]), flags=flags, config=config,
                   complete=bool(data.get("complete", True)), raw=data)

    # ---- flags -------------------------------------------------------------------------------

    def flag(self, name: str) -> Flag | None:
        """The flag ``name`` names (``--x``, ``--x=v``, ``x``, ``-v``), or None."""
        n = _norm(name)
        if n in self.flags:
            return self.flags[n]
        if len(n) == 1:
            return next((f for f in self.flags.values() if f.short == n), None)
        return None

    def unknown(self, flags: Iterable[str]) -> list[str]:
        """The given flags (names or ``--name=value`` items) this version does not have."""
        return [f for f in flags if self.flag(f) is None]

    def deprecated(self, flags: Iterable[str]) -> list[tuple[str, str]]:
        """(flag, note) for each given flag this version marks deprecated or refuses."""
        out = []
        for f in flags:
            spec = self.flag(f)
            if spec is not None and (spec.deprecated or spec.rejected):
                out.append((f, spec.rejected or spec.deprecated))
        return out

    def validate(self, flag: str, value: str) -> str | None:
        """What is wrong with ``value`` for ``flag`` (one phrase), or None if it parses."""
        spec = self.flag(flag)
        if spec is None:
            return f"unknown flag: {self.component} v{self.version} has no --{_norm(flag)}"
        return _check_value(spec.type, spec.format, spec.enum, value)

    def parse_argv(self, args: Iterable[str]) -> tuple[dict[str, list[str]], list[Issue]]:
        """Parse a command line (without argv[0]) the way pflag does: values by flag name, and issues."""
        values: dict[str, list[str]] = {}
        issues: list[Issue] = []
        items = list(args)
        i = 0
        while i < len(items):
            item = items[i]
            i += 1
            if item == "--":
                issues.extend(Issue(a, "argument", f"unexpected argument {a!r}") for a in items[i:])
                break
            if not item.startswith("-") or item == "-":
                issues.append(Issue(item, "argument", f"{self.component} takes no arguments, got {item!r}"))
                continue
            shown = item.split("=", 1)[0]
            spec = self.flag(item)
            if spec is None:
                issues.append(Issue(shown, "unknown",
                                    f"unknown flag {shown}: {self.component} v{self.version} has no such flag"))
                continue
            if "=" in item:
                value = item.split("=", 1)[1]
            elif not spec.takes_value:
                value = "true"
            elif i < len(items):
                value = items[i]
                i += 1
            else:
                issues.append(Issue(shown, "missing-value", f"flag needs an argument: {shown}"))
                continue
            if spec.rejected:
                issues.append(Issue(shown, "rejected", f"{shown}: {spec.rejected}"))
            elif spec.deprecated:
                issues.append(Issue(shown, "deprecated", f"{shown} is deprecated: {spec.deprecated}"))
            problem = _check_value(spec.type, spec.format, spec.enum, value)
            if problem:
                issues.append(Issue(shown, "malformed", f"invalid value {value!r} for {shown}: {problem}"))
            values.setdefault(_norm(spec.name), []).append(value)
        return values, issues

    def check_argv(self, args: Iterable[str]) -> list[Issue]:
        return self.parse_argv(args)[1]

    def usage(self) -> str:
        """A --help text listing every flag this version has."""
        lines = []
        for f in sorted(self.flags.values(), key=lambda f: _norm(f.name)):
            head = (f"-{f.short}, " if f.short else "    ") + f"--{f.name}"
            if f.type not in SWITCH_TYPES:
                head += f" {f.type}"
            note = f" (DEPRECATED: {f.deprecated})" if f.deprecated else ""
            note += f" (REFUSED: {f.rejected})" if f.rejected else ""
            if f.enum:
                choices = ", ".join(v or '""' for v in f.enum)
                note = f" one of: {choices}" + note
            lines.append(f"  {head}{note}")
        return "\n".join(lines)

    # ---- config file ------------------------------------------------------------------------

    def check_config(self, doc: object) -> list[str]:
        """Problems with a decoded config file (its apiVersion/kind, unknown keys, ill-typed values)."""
        if self.config is None:
            return [f"{self.component} takes no config file hardway knows"]
        if not isinstance(doc, Mapping):
            return ["not a YAML mapping"]
        problems = []
        for key, want in (("apiVersion", self.config.api_version), ("kind", self.config.kind)):
            if doc.get(key) != want:
                problems.append(f"{key}: {doc.get(key)!r}, expected {want!r}")
        rest = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
        problems.extend(_check_object(rest, self.config.keys, "", self.version))
        return problems


def _config_keys(entries: Mapping) -> dict[str, ConfigKey]:
    out = {}
    for name, entry in entries.items():
        e = {"type": entry} if isinstance(entry, str) else dict(entry)
        nested = _config_keys(e["keys"]) if e.get("keys") else None
        out[name] = ConfigKey(name=name, type=str(e["type"]), enum=tuple(str(v) for v in e.get("enum", ())),
                              format=e.get("format", ""), since=str(e.get("since", "")),
                              rejected=e.get("rejected", ""), keys=nested)
    return out


def _minor(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", version)[:2]
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)


def _check_object(doc: Mapping, keys: Mapping[str, ConfigKey], prefix: str, version: str) -> list[str]:
    problems = []
    for name, value in doc.items():
        path = f"{prefix}{name}"
        key = keys.get(name)
        if key is not None and key.since and _minor(key.since) > _minor(version):
            problems.append(f"{path}: unknown key (added in v{key.since}, after v{version})")
            continue
        if key is None:
            near = [k for k in keys if k.lower() == str(name).lower()]
            hint = f" (did you mean {near[0]}?)" if near else ""
            problems.append(f"{path}: unknown key{hint}")
            continue
        if key.rejected:
            problems.append(f"{path}: {key.rejected}")
            continue
        if key.keys is not None:
            if not isinstance(value, Mapping):
                problems.append(f"{path}: expected a mapping ({key.type}), got {type(value).__name__}")
            else:
                problems.extend(_check_object(value, key.keys, path + ".", version))
            continue
        problem = _check_config_value(key, value)
        if problem:
            problems.append(f"{path}: {problem}")
    return problems


def _check_config_value(key: ConfigKey, value: object) -> str | None:
    t = key.type
    if value is None:
        return None
    if t == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if t in ("int32", "int64"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if t.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if t in ("string", "duration"):
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
        return _check_value(t, key.format, key.enum, value)
    if t.startswith("[]"):
        if not isinstance(value, list):
            return f"expected a list ({t}), got {type(value).__name__}"
        if t == "[]string":
            for item in value:
                problem = (f"expected strings, got {item!r}" if not isinstance(item, str)
                           else _check_value("string", key.format, key.enum, item))
                if problem:
                    return problem
        return None
    if t.startswith("map["):
        if not isinstance(value, Mapping):
            return f"expected a mapping ({t}), got {type(value).__name__}"
        want = bool if t.endswith("]bool") else str if t.endswith("]string") else object
        bad = [k for k, v in value.items() if not isinstance(v, want)]
        return f"{bad[0]}: expected {want.__name__} values" if bad else None
    return None  # a nested object hardway does not check field by field


# ---- values ---------------------------------------------------------------------------------


def _check_value(type_: str, fmt: str, enum: tuple[str, ...], value: str) -> str | None:
    if type_ in ("bool",):
        return None if value in _BOOLS else "expected true or false"
    if type_ in _INT_BITS:
        return _check_int(value, _INT_BITS[type_], unsigned=type_ == "uint") or (
            _check_format(fmt, value) if fmt else None)
    if type_.startswith("float"):
        try:
            float(value)
        except ValueError:
            return "expected a number"
        return None
    if type_ == "duration":
        return None if _DURATION.match(value) else "expected a duration such as 30s, 5m or 1h30m"
    if type_ == "quantity":
        return None if _QUANTITY.match(value) else "expected a quantity such as 512, 1K or 2Ki"
    if type_ == "portRange" or type_.startswith("<a string in the form 'N1-N2'"):
        return _check_port_range(value)
    if type_ in ("mapStringBool",):
        return _check_pairs(value, lambda v: v in _BOOLS, "key=true|false")
    if type_ in ("mapStringString", "stringToString", "colonSeparatedMultimapStringString"):
        return _check_pairs(value, lambda v: True, "key=value")
    if type_ == "pattern=N,...":
        return _check_pairs(value, lambda v: _check_int(v, 32) is None, "pattern=N")
    if type_ in ("strings", "stringSlice"):
        items = [v.strip() for v in value.split(",")] if value else []
        if fmt == "cidrs":
            return _check_format(fmt, value)
        for item in items:
            problem = _check_enum(enum, item) or (_check_format(fmt, item) if fmt else None)
            if problem:
                return problem
        return None
    # string and the named string types (LocalMode, ProxyMode, ipport, traceLocation, version)
    if type_ == "ipport":
        fmt = fmt or "ipport"
    problem = _check_enum(enum, value)
    if problem or not fmt or (value == "" and fmt != "port"):
        return problem
    return _check_format(fmt, value)


def _check_enum(enum: tuple[str, ...], value: str) -> str | None:
    if not enum or value in enum:
        return None
    return f"expected one of {', '.join(repr(v) for v in enum)}"


def _check_int(value: str, bits: int, unsigned: bool = False) -> str | None:
    try:
        n = int(value, 0)
    except ValueError:
        if not re.fullmatch(r"[+-]?0[0-7]+", value):  # Go reads a leading 0 as octal
            return "expected an integer"
        n = int(value, 8)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return None if low <= n <= high else f"out of range for a {bits}-bit {'unsigned ' if unsigned else ''}integer"


def _check_pairs(value: str, ok, shape: str) -> str | None:
    for item in (v.strip() for v in value.split(",") if v.strip()):
        key, sep, val = item.partition("=")
        if not sep or not key or not ok(val):
            return f"expected comma-separated {shape} pairs, got {item!r}"
    return None


def _check_port_range(value: str) -> str | None:
    m = re.fullmatch(r"(\d+)(?:([-+])(\d+))?", value.strip())
    if not m:
        return "expected a port range N1-N2"
    low = int(m.group(1))
    high = low if m.group(3) is None else (int(m.group(3)) if m.group(2) == "-" else low + int(m.group(3)))
    if not 0 <= low <= high <= 65535:
        return "expected ports 0-65535 with N1 <= N2"
    return None


def _check_format(fmt: str, value: str) -> str | None:
    """Formats hardway reads from the flags' descriptions."""
    try:
        if fmt == "ip":
            ipaddress.ip_address(value)
        elif fmt == "ips":
            for item in value.split(","):
                ipaddress.ip_address(item.strip())
        elif fmt == "cidr":
            _cidr(value)
        elif fmt == "cidrs":
            nets = [_cidr(v.strip()) for v in value.split(",")]
            if len(nets) > 2 or (len(nets) == 2 and nets[0].version == nets[1].version):
                return "expected one CIDR, or two of different IP families (dual-stack)"
        elif fmt == "port":
            n = int(value, 10)
            if not 0 <= n <= 65535:
                return "expected a port number 0-65535"
        elif fmt == "ipport":
            host, _, port = value.rpartition(":")
            ipaddress.ip_address(host.strip("[]"))
            if not port.isdigit() or not 0 <= int(port) <= 65535:
                return "expected IP:port"
        elif fmt == "url":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return "expected a URL scheme://host:port"
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        return {"ip": "not an IP address", "ips": "not a comma-separated list of IP addresses",
                "cidr": "not a CIDR", "cidrs": "not a CIDR (or comma-separated pair)", "port": "not a port number",
                "ipport": "expected IP:port", "url": "not a URL"}.get(fmt, str(exc))
    return None


def _cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if "/" not in value:
        raise ValueError(value)
    return ipaddress.ip_network(value, strict=False)


# ---- the data files ---------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parent / "data" / "kubernetes"


def minor_of(version: str) -> str:
    """'1.32.3', 'v1.32' -> '1.32'."""
    major, minor = _minor(version)
    return f"{major}.{minor}"


def available_versions() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if p.is_dir()) if DATA_DIR.is_dir() else []


def load(component: str, version: str) -> Spec:
    """The Spec of ``component`` at ``version`` (any patch of a minor the data covers)."""
    return _load(component, minor_of(version))


@functools.cache
def _load(component: str, minor: str) -> Spec:
    import yaml  # only the repo-side loader needs it; stand-ins get the data embedded as JSON

    from hardway.errors import HardwayError

    if component not in COMPONENTS:
        raise HardwayError(f"no flag data for {component!r}: known components are {', '.join(COMPONENTS)}")
    path = DATA_DIR / minor / f"{component}.yaml"
    if not path.is_file():
        have = ", ".join(available_versions()) or "none"
        raise HardwayError(f"no flag data for {component} v{minor} in {DATA_DIR} (have: {have}): pin "
                           "versions.kubernetes to a covered minor version or add the data")
    return Spec.from_dict(yaml.safe_load(path.read_text()))
