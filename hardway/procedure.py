"""A procedure: numbered steps on named nodes, printable as a dry run, safe to interrupt.

Day-2 tasks (replace a member, restore, reset) change live clusters one step at a time. Each
step says where it runs, what it does and the command a dry run shows; it may carry an ``undo``
that puts back what it changed. When a step fails, or the user presses Ctrl-C, the steps done so
far are undone newest first, back to the last step that cannot be undone (``final``): from there
the message names exactly what to run to finish. Either way the error is one line.

Ctrl-C is honoured between steps and inside waits (``checkpoint``), never in the middle of a
command on a node: a remote command cut in half is what leaves a cluster worse than before (and
Fabric forwards the interrupt to the remote command instead of stopping). A second Ctrl-C while
undoing is ignored: undoing is what brings the cluster back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hardway.errors import HardwayError
from hardway.remote import Progress

_interrupted = threading.Event()
_undoing = threading.Event()  # while set, Ctrl-C is ignored


def checkpoint() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed since the procedure began."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


def sleep(seconds: float) -> None:
    """time.sleep that wakes for Ctrl-C."""
    if _interrupted.wait(seconds):
        raise KeyboardInterrupt


def interrupt(*_: object) -> None:
    """What the SIGINT handler does (tests call it to interrupt at an exact point)."""
    if not _undoing.is_set():
        _interrupted.set()


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


@dataclass
class Step:
    where: str  # a node's name, or "jumpbox"
    what: str  # one line: "stop etcd"
    command: str = ""  # shown by a dry run: the command run on ``where`` ("" for a local step)
    run: Callable[[], object] | None = None
    undo: Callable[[], object] | None = None  # puts back what ``run`` changed
    undo_text: str = ""  # the command ``undo`` runs, for a message when it fails
    final: str = ""  # once done there is no going back: how to finish instead (a command)
    seconds: float = 0.0  # how long it took (where the time goes: bench/etcd_day2.py prints it)


@dataclass
class Procedure:
    title: str  # "etcd.replace controller-0"
    progress: Progress
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a dry run adds at the end (checks made, choices)

    def add(self, where: str, what: str, command: str = "", run: Callable[[], object] | None = None, *,
            undo: Callable[[], object] | None = None, undo_text: str = "", final: str = "") -> Step:
        step = Step(where, what, command, run, undo, undo_text, final)
        self.steps.append(step)
        return step

    def timings(self) -> str:
        """Seconds per step, after a run."""
        return "; ".join(f"{s.what.split(' (')[0]} {s.seconds:.2f}s" for s in self.steps)

    def describe(self) -> str:
        """The dry run: every step, where, and its command."""
        lines = [f"{self.title}: {len(self.steps)} steps"]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i:>3}. [{s.where}] {s.what}")
            for cmd_line in s.command.splitlines():
                lines.append(f"       $ {cmd_line}")
        lines += [f"     {n}" for n in self.notes]
        return "\n".join(lines)

    def run(self) -> float:
        """Run every step; undo on failure or Ctrl-C. Returns the seconds taken."""
        t0 = time.monotonic()
        done: list[Step] = []
        current: Step | None = None
        with _sigint_deferred():
            try:
                for current in self.steps:
                    checkpoint()
                    self.progress(current.where, current.what)
                    started = time.monotonic()
                    if current.run is not None:
                        current.run()
                    current.seconds = time.monotonic() - started
                    done.append(current)
                    current = None
                checkpoint()  # a Ctrl-C during the last step still counts
            except KeyboardInterrupt:
                raise self._fail("interrupted (Ctrl-C)", current, done) from None
            except HardwayError as exc:
                raise self._fail(str(exc), current, done) from None
        return time.monotonic() - t0

    def _fail(self, cause: str, at: Step | None, done: list[Step]) -> HardwayError:
        _undoing.set()  # a second Ctrl-C while undoing changes nothing
        _interrupted.clear()
        try:
            return self._undo(cause, at, done)
        finally:
            _undoing.clear()

    def _undo(self, cause: str, at: Step | None, done: list[Step]) -> HardwayError:
        position = (f"at step {self.steps.index(at) + 1} ({at.what} on {at.where})" if at is not None
                    else "after the last step")
        undone, failed, finish = [], [], ""
        # the step that failed may have half-happened: undo it too, if it can be undone
        for step in reversed(done + ([at] if at is not None and at.undo is not None else [])):
            if step.undo is not None:
                try:
                    step.undo()
                    undone.append(step.what)
                except (HardwayError, OSError) as exc:
                    failed.append(f"could not undo '{step.what}' on {step.where} ({exc}); run `{step.undo_text}` "
                                  f"there")
            if step.final and step is not at:
                finish = step.final
                break
        parts = [f"{self.title}: {cause} {position}"]
        if undone:
            parts.append("undone: " + ", ".join(undone))
        parts += failed
        if finish:
            parts.append(f"to finish, run `{finish}`")
        elif not failed:
            parts.append("the cluster is as it was before")
        return HardwayError("; ".join(parts))
