"""The README's main command, run as printed, on a copy of this checkout: what a newcomer types first.

It boots the default lab (named ``lab``, 10.77.0.0/24), so it runs only where no default lab is
recorded: never on a lab of yours. The copy keeps the PKI and inventory it writes out of this tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hardway import lab as lab_lib

ROOT = Path(__file__).resolve().parent.parent
SETUP = "bash scripts/setup.sh && "


def readme_main_command() -> str:
    """The command under "Run the main job": the first indented line that starts with the setup script."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up on a fresh machine", 1)[1]
    match = re.search(r"^ {4}(bash scripts/setup\.sh && invoke .+)$", section, re.M)
    assert match, "README: no indented `bash scripts/setup.sh && invoke ...` line in its set-up section"
    return match.group(1)


def test_readme_main_command_is_the_whole_chain() -> None:
    words = shlex.split(readme_main_command().removeprefix(SETUP))
    assert words[0] == "invoke"
    for step in ("lab.up", "pki", "bootstrap-etcd", "bootstrap-control-plane", "bootstrap-workers", "pod-routes",
                 "verify"):
        assert step in words, f"README's main command lacks {step}"
    assert words.index("bootstrap-etcd") < words.index("bootstrap-control-plane") < words.index("bootstrap-workers")


@pytest.mark.lab
def test_readme_main_command_brings_up_a_verified_cluster(tmp_path: Path, lab_factory) -> None:
    if lab_lib.load_layout(lab_lib.DEFAULT_NAME) is not None:
        pytest.skip("a default lab named `lab` is recorded here: this test never touches a lab of yours")
    copy = tmp_path / "hardway"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    command = readme_main_command().removeprefix(SETUP)  # setup.sh already ran: this is the test run
    env = {k: v for k, v in os.environ.items() if k != "HARDWAY_INVENTORY"}
    try:
        done = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-4000:]
        assert "fail " not in out.lower(), out[-4000:]
        assert (copy / "pki" / "lab" / "ca.key").stat().st_mode & 0o777 == 0o600
        assert "(stand-in)" in out, "the stand-ins say so wherever they show up"
    finally:
        lab_lib.down(lab_lib.DEFAULT_NAME, report=lambda _m: None)
