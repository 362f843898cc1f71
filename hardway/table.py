"""The one table formatter: left-aligned columns, the last one free (it may be long)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, gap: str = "  ",
                 notes: Sequence[Sequence[str]] | None = None) -> str:
    """``headers`` and ``rows`` as aligned text. ``notes[i]`` are extra lines printed under row i,
    indented to the last column (hints under a check's detail)."""
    widths = [max([len(headers[i]), *(len(r[i]) for r in rows)]) for i in range(len(headers) - 1)]
    indent = " " * (sum(widths) + len(gap) * len(widths))

    def line(cells: Sequence[str]) -> str:
        return (gap.join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + gap + cells[-1]).rstrip()

    lines = [line(headers)]
    for i, row in enumerate(rows):
        lines.append(line(row))
        if notes:
            lines.extend(indent + n for n in notes[i])
    return "\n".join(lines)
