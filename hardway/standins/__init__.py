"""Stand-ins for the Kubernetes server binaries, which cannot be downloaded here (DESIGN.md,
"Where the real thing cannot run here").

A stand-in is a contract check, not a fake success: it refuses flags the pinned version does not
have and malformed values, opens every file its flags and config name (certificates, keys and
kubeconfigs must parse and match), talks TLS to etcd or the apiserver with the configured client
certificate, and serves the health endpoints the real component serves, over TLS with the configured
certificates. Every line it prints says "(stand-in)"; ``/version`` says ``v<version>-hardway-standin``.

The chapters install one with::

    File(path=standins.install_path(component), mode=0o755, content=standins.program(component, version))

or ``standins.standin_file(component, version, chapter=...)``. ``program`` returns one self-contained
``#!/usr/bin/python3`` file (standard library, python3-yaml and python3-cryptography, which lab nodes
have): ``hardway/flagspec.py`` and ``runtime/*.py`` inlined, the component's flag data embedded.
"""

from __future__ import annotations

import json
from pathlib import Path

from hardway import flagspec
from hardway.files import File

INSTALL_DIR = "/usr/local/bin"
COMPONENTS = flagspec.COMPONENTS
VERSION_MARK = "-hardway-standin"  # in `--version` output and /version's gitVersion
INTERPRETER = "/usr/bin/python3"  # Debian's, on the nodes: not the jumpbox's Python

_HERE = Path(__file__).resolve().parent
_SOURCES = (Path(flagspec.__file__).resolve(), _HERE / "runtime" / "common.py", _HERE / "runtime" / "apiserver.py",
            _HERE / "runtime" / "components.py")
_INLINED = "# inlined"  # import lines that only make the runtime importable in the repo


def install_path(component: str) -> str:
    return f"{INSTALL_DIR}/{component}"


def is_standin(version_output: str) -> bool:
    """True if a binary's ``--version`` output (or /version gitVersion) is a hardway stand-in's."""
    return VERSION_MARK in version_output


def _strip(source: str) -> str:
    kept = [line for line in source.splitlines()
            if not line.rstrip().endswith(_INLINED) and line.strip() != "from __future__ import annotations"]
    return "\n".join(kept)


def program(component: str, version: str) -> bytes:
    """The stand-in for ``component`` at Kubernetes ``version`` (e.g. "1.32.3"), as file bytes.

    Raises HardwayError if the data has no flag list for that component and minor version.
    """
    version = version.lstrip("v")
    spec = flagspec.load(component, version)
    body = "\n\n".join(_strip(path.read_text()) for path in _SOURCES)
    header = (f"#!{INTERPRETER}\n"
              f"# {component} v{version} stand-in: a contract check, not Kubernetes. Built by hardway\n"
              "# (hardway/standins) from hardway/flagspec.py and hardway/standins/runtime/*.py; do not edit.\n"
              "from __future__ import annotations\n")
    tail = (f"\n\nSPEC = json.loads({json.dumps(json.dumps(spec.raw, sort_keys=True))})\n\n"
            "if __name__ == \"__main__\":\n"
            f"    sys.exit(main(SPEC, {component!r}, {version!r}))\n")
    return (header + body + tail).encode()


def standin_file(component: str, version: str, *, chapter: str = "") -> File:
    """The stand-in as the File a chapter installs (0755 at /usr/local/bin/<component>)."""
    return File(path=install_path(component), mode=0o755, content=program(component, version),
                services=(component,), chapter=chapter)
