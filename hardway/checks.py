"""Verification: checks that prove a chapter worked and, when it did not, say why and what to do.

A check is a function returning Results; each Result is ok, warn or fail, with a detail
(what was seen) and, for warn/fail, a hint (the likely cause and the fix). The runner never
lets one broken check hide the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Result:
    chapter: str
    check: str
    node: str
    status: str
    detail: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.status not in (OK, WARN, FAIL):
            raise ValueError(f"unknown status {self.status!r}")


@dataclass(frozen=True)
class Check:
    chapter: str
    name: str
    description: str
    run: Callable[[], Iterable[Result]]


def run_checks(checks: Sequence[Check]) -> list[Result]:
    results: list[Result] = []
    for check in checks:
        try:
            results.extend(check.run())
        except Exception as exc:  # a check that crashes is a failed check, not a crashed verify
            results.append(Result(check.chapter, check.name, "-", FAIL,
                                  f"the check itself failed: {type(exc).__name__}: {exc}",
                                  "this is a bug in hardway if the message is not about your cluster"))
    return results


def failed(results: Iterable[Result]) -> bool:
    return any(r.status == FAIL for r in results)


def format_table(results: Sequence[Result]) -> str:
    headers = ("STATUS", "CHAPTER", "CHECK", "NODE", "DETAIL")
    rows = [(r.status.upper(), r.chapter, r.check, r.node, r.detail) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r, row in zip(results, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if r.hint and r.status != OK:
            lines.append(" " * (sum(widths[:-1]) + 2 * (len(widths) - 1)) + f"hint: {r.hint}")
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines)


def to_json(results: Sequence[Result]) -> str:
    return json.dumps({"results": [asdict(r) for r in results], "failed": failed(results)}, indent=2)
