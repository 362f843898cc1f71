"""The one exception type users see: a single line naming what is wrong and how to fix it."""

from __future__ import annotations


class HardwayError(Exception):
    """A user-facing error. ``str(err)`` is one line; tasks print it and exit 1 (no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))
