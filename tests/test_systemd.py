"""hardway.systemd: the systemd_exec quoting (round-tripped through systemd itself) and the real lint."""


from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hardway.chapters.etcd.files import etcd_argv
from hardway.errors import HardwayError
from hardway.systemd import lint_units, systemd_exec, systemd_quote
from tests.systemd_dump import exec_argv

TRICKY = [
    "/usr/local/bin/demo",
    "--foo=a b",
    "--pct=50%",
    "--dollar=$HOME",
    "--brace=${HOME}",
    "--spec=%n",
    "#not-a-comment",
    ";",
    "a;b",
    'say="hi"',
    "it's",
    "back\\slash",
    "trailing\\",
    "",
    "tab\there",
    "ünïcode",
    "--plain",
]

TRICKY_TEXT = """\
/usr/local/bin/demo \\
  "--foo=a b" \\
  --pct=50%% \\
  --dollar=$$HOME \\
  --brace=$${HOME} \\
  --spec=%%n \\
  "#not-a-comment" \\
  ";" \\
  "a;b" \\
  "say=\\"hi\\"" \\
  "it's" \\
  "back\\\\slash" \\
  "trailing\\\\" \\
  "" \\
  "tab\\there" \\
  ünïcode \\
  --plain"""


def unit_text(argv: list[str], name: str = "demo") -> str:
    return (f"[Unit]\nDescription={name}\n\n[Service]\nExecStart={systemd_exec(argv)}\n"
            "Restart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n")


def analyze_stderr(path: Path) -> str:
    """systemd-analyze verify run directly (no hardway code) on a unit whose binary exists."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=false", str(path)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "SYSTEMD_UNIT_PATH": "/usr/lib/systemd/system", "SYSTEMD_LOG_COLOR": "0"},
    )
    return proc.stderr


# --------------------------------------------------------------------------------------------
# systemd_exec


def test_systemd_exec_exact_text():
    assert systemd_exec(TRICKY) == TRICKY_TEXT


def test_systemd_exec_round_trips_through_systemd(tmp_path):
    argv = ["/bin/true", *TRICKY[1:]]  # a binary that exists: verify runs unmodified
    unit = tmp_path / "demo.service"
    unit.write_text(unit_text(argv))
    assert analyze_stderr(unit) == ""
    assert lint_units([unit]) == []
    assert exec_argv(unit) == [argv]


def test_naive_joining_is_what_goes_wrong(tmp_path):
    """What the filter prevents: an unquoted `#` word at a line start is a comment (dropped) and an
    undoubled `${X}` is substituted; verify says nothing about either, only the parsed argv shows it."""
    unit = tmp_path / "naive.service"
    naive = " \\\n  ".join(["/bin/true", "--pct=50%", "#dropped", "--brace=${HOME}"])
    unit.write_text(f"[Unit]\nDescription=naive\n\n[Service]\nExecStart={naive}\n")
    assert exec_argv(unit) == [["/bin/true", "--pct=50%", "--brace="]]
    assert lint_units([unit]) == []


def test_systemd_quote_rules():
    assert systemd_quote("plain") == "plain"
    assert systemd_quote("") == '""'
    assert systemd_quote("50%") == "50%%"
    assert systemd_quote("$X") == "$$X"
    assert systemd_quote("a b%") == '"a b%%"'
    assert systemd_quote('x"y') == '"x\\"y"'
    assert systemd_quote("a\\b") == '"a\\\\b"'
    assert systemd_quote("line\nbreak") == '"line\\nbreak"'
    assert systemd_quote("bell\x07") == '"bell\\a"'
    assert systemd_quote("esc\x1b") == '"esc\\x1b"'


@pytest.mark.parametrize("bad", ["/usr/bin/x", ["relative/x"], ["/bin/my prog"], ["/bin/x%i"], [],
                                 ["/bin/x", 3]])
def test_systemd_exec_rejects_bad_argv(bad):
    with pytest.raises(HardwayError, match="systemd_exec"):
        systemd_exec(bad)


def test_no_hand_placed_backslashes_in_unit_templates():
    for template in (Path(__file__).resolve().parent.parent / "templates" / "units").glob("*.j2"):
        text = template.read_text()
        assert "\\" not in text, template
        if template.name.endswith(".service.j2"):  # a timer starts its service: it has no command line
            # argv built in Python; a oneshot may run several (hardway-pod-routes: one per route, '-': independent)
            assert re.search(r"^ExecStart=-?\{\{ (argv|\w+\.argv) \| systemd_exec \}\}$", text, re.M), template


# --------------------------------------------------------------------------------------------
# Lint with the real systemd-analyze


def test_every_rendered_unit_passes_verify(inv, build, tmp_path):
    _, written = build
    units = [p for p in written if p.suffix == ".service"]
    # etcd + 3 control-plane units per controller, 3 per worker, the pod-routes boot unit on every controller
    # and worker, HAProxy's on each load balancer
    assert len(units) == 4 * len(inv.controllers) + 3 * len(inv.workers) + len(inv.controllers) + len(inv.workers) \
        + len(inv.loadbalancers)
    assert lint_units(units) == []
    # The same verdict straight from systemd-analyze, on copies whose binary exists here.
    for unit in units:
        copy = tmp_path / unit.parents[3].name / unit.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(re.sub(r"^(ExecStart=)\S+", r"\1/bin/true", unit.read_text(), flags=re.M))
    for copy in tmp_path.glob("*/*.service"):
        assert analyze_stderr(copy) == "", copy


def test_systemd_parses_every_unit_as_planned(inv, build):
    out, _ = build
    for c in inv.controllers:
        assert exec_argv(out / c.name / "etc/systemd/system/etcd.service") == [etcd_argv(inv, c)]


@pytest.mark.parametrize(("body", "expected"), [
    ("ExecStart=/bin/true \\ \n  --bar=1\n", "--bar"),  # backslash then a space: no continuation
    ("ExecStart /bin/true\n", "Missing '='"),
    ("ExecStart=/bin/true --x=%Q\n", "specifiers"),
    ("ExecStart=/bin/true \"a\\qb\"\n", "escape"),
    ("Type=notfy\nExecStart=/bin/true\n", "notfy"),
])
def test_broken_units_are_reported(tmp_path, body, expected):
    unit = tmp_path / "broken.service"
    unit.write_text(f"[Unit]\nDescription=broken\n\n[Service]\n{body}")
    problems = lint_units([unit])
    assert problems, body
    assert any(expected in p for p in problems), problems
    assert all(str(unit) in p or p.startswith("broken.service") for p in problems), problems


def test_lint_verifies_siblings_together(tmp_path):
    (tmp_path / "a.service").write_text("[Unit]\nRequires=b.service\nAfter=b.service\n\n"
                                        "[Service]\nExecStart=/usr/local/bin/not-here-a\n")
    assert any("b.service" in p for p in lint_units([tmp_path / "a.service"]))
    (tmp_path / "b.service").write_text("[Service]\nExecStart=/usr/local/bin/not-here-b\n")
    assert lint_units([tmp_path / "a.service", tmp_path / "b.service"]) == []


def test_lint_ignores_the_host_etc(tmp_path, monkeypatch):
    """A unit named like one the host masks or drops in for is judged on its own bytes."""
    unit = tmp_path / "etcd.service"
    unit.write_text("[Unit]\nDescription=mine\n\n[Service]\nType=notify\nExecStart=/usr/local/bin/etcd\n")
    # a drop-in of the host's for the same unit name, which plain `systemd-analyze verify` merges in
    dropin = tmp_path / "host" / "etcd.service.d"
    dropin.mkdir(parents=True)
    (dropin / "x.conf").write_text("[Service]\nBogusKey=1\n")
    monkeypatch.setenv("SYSTEMD_UNIT_PATH", f"{tmp_path / 'host'}:")
    plain = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=false", str(unit)],
                           capture_output=True, text=True, check=False)
    assert "BogusKey" in plain.stderr  # the host's drop-in does reach an unisolated verify
    assert lint_units([unit]) == []
    assert exec_argv(unit) == [["/usr/local/bin/etcd"]]


# --------------------------------------------------------------------------------------------
# The etcd unit against the real etcd


def test_etcd_flags_are_known_to_the_real_etcd(inv):
    proc = subprocess.run(["/usr/bin/etcd", "--help"], capture_output=True, text=True, check=False)
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", proc.stdout + proc.stderr, re.M))
    assert "--initial-cluster" in known
    for c in inv.controllers:
        for arg in etcd_argv(inv, c)[1:]:
            assert arg.split("=", 1)[0] in known, arg
