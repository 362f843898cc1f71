"""Known failure signatures: a log line that names a cause, and the fix for it.

A chapter lists the signatures of its own services (``Chapter.signatures``); verify and
``invoke diagnose`` match them against journals. A match is judged by where it was seen: on a
member that is failing it is a failure; on a healthy one it may only be the echo of another
member's failure (``about_peers``), a latent problem (``latent``: a slow disk), or history that
no longer explains anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    name: str  # short and stable: "cluster-id-mismatch"
    pattern: str  # a regular expression over one journal line
    cause: str
    fix: str  # may name {node}, {stale} (the member whose data is stale) and {data_dir}
    about_peers: bool = False  # healthy members log it too, because of another member
    latent: bool = False  # a warning even where everything still works
    needs_stale: bool = False  # explains a failure only while some member's data dir is stale

    def first_line(self, text: str) -> str | None:
        rx = re.compile(self.pattern)
        return next((line.strip() for line in text.splitlines() if rx.search(line)), None)

    def count(self, text: str) -> int:
        rx = re.compile(self.pattern)
        return sum(1 for line in text.splitlines() if rx.search(line))


def shorten(line: str, limit: int = 140) -> str:
    """A journal line for a table: the JSON log's "msg" (and its "error") when there is one, else the line's start."""
    m = re.search(r'"msg":"([^"]*)"', line)
    error = re.search(r'"error":"((?:[^"\\]|\\.)*)"', line)  # what failed, where etcd says it
    text = (m.group(1) + (f": {error.group(1)}" if error else "")) if m else line
    return text if len(text) <= limit else text[: limit - 1] + "…"
