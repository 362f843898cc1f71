"""Verification: checks that prove a chapter worked and, when it did not, say why and what to do.

A check is a function returning CheckResults; each is ok, warn, fail or skip, with a detail
(what was seen) and, for the others, a hint (the likely cause and the fix). ``skip`` is for what
cannot be proven here (a stand-in instead of the real binary): never counted as ok. The runner
never lets one broken check hide the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from hardway.table import format_table as _table

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class CheckResult:
    chapter: str
    check: str
    node: str
    status: str
    detail: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


@dataclass(frozen=True)
class Check:
    chapter: str
    name: str
    description: str
    run: Callable[[], Iterable[CheckResult]]


def run_checks(checks: Sequence[Check]) -> list[CheckResult]:
    results: list[CheckResult] = []
    for check in checks:
        try:
            results.extend(check.run())
        except Exception as exc:  # a check that crashes is a failed check, not a crashed verify
            results.append(CheckResult(check.chapter, check.name, "-", FAIL,
                                       f"the check itself failed: {type(exc).__name__}: {exc}",
                                       "this is a bug in hardway if the message is not about your cluster"))
    return results


def failed(results: Iterable[CheckResult]) -> bool:
    return any(r.status == FAIL for r in results)


def summary(results: Sequence[CheckResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    text = f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail"
    return text + (f", {counts[SKIP]} skipped" if counts[SKIP] else "")


def format_table(results: Sequence[CheckResult]) -> str:
    rows = [(r.status.upper(), r.chapter, r.check, r.node, r.detail) for r in results]
    notes = [[f"hint: {r.hint}"] if r.hint and r.status != OK else [] for r in results]
    return _table(("STATUS", "CHAPTER", "CHECK", "NODE", "DETAIL"), rows, notes=notes) + "\n" + summary(results)


def to_json(results: Sequence[CheckResult]) -> str:
    return json.dumps({"results": [asdict(r) for r in results], "failed": failed(results),
                       "summary": summary(results)}, indent=2)
