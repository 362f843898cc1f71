"""hardway.procedure: the dry run's text, undo newest first back to the last step that cannot be
undone, one-line errors, and Ctrl-C honoured between steps and in waits."""

from __future__ import annotations

import pytest

from hardway import procedure
from hardway.errors import HardwayError
from hardway.procedure import Procedure
from hardway.remote import QUIET


def steps(log: list[str], fail_at: str = "", final_at: str = "") -> Procedure:
    proc = Procedure("task x", QUIET)
    for name in ("a", "b", "c", "d"):
        def run(name: str = name) -> None:
            log.append(f"do {name}")
            if name == fail_at:
                raise HardwayError(f"{name} broke")

        proc.add("node-1", f"step {name}", f"cmd-{name}", run, undo=lambda name=name: log.append(f"undo {name}"),
                 undo_text=f"undo-{name}", final="invoke x --again" if name == final_at else "")
    return proc


def test_the_dry_run_lists_every_step_where_and_its_command() -> None:
    text = steps([]).describe()
    assert text.splitlines()[:3] == ["task x: 4 steps", "  1. [node-1] step a", "       $ cmd-a"]


def test_a_failure_undoes_what_was_done_newest_first_including_the_failed_step() -> None:
    log: list[str] = []
    with pytest.raises(HardwayError) as err:
        steps(log, fail_at="c").run()
    assert log == ["do a", "do b", "do c", "undo c", "undo b", "undo a"]
    assert str(err.value) == ("task x: c broke at step 3 (step c on node-1); undone: step c, step b, step a; "
                              "the cluster is as it was before")


def test_undo_stops_at_a_step_that_cannot_be_undone_and_names_what_finishes_the_job() -> None:
    log: list[str] = []
    with pytest.raises(HardwayError) as err:
        steps(log, fail_at="d", final_at="b").run()
    assert log == ["do a", "do b", "do c", "do d", "undo d", "undo c", "undo b"]
    assert str(err.value).endswith("undone: step d, step c, step b; to finish, run `invoke x --again`")


def test_an_undo_that_fails_says_what_to_run() -> None:
    proc = Procedure("task y", QUIET)
    proc.add("n", "one", "", lambda: None, undo=lambda: (_ for _ in ()).throw(HardwayError("no")), undo_text="fix-it")
    proc.add("n", "two", "", lambda: (_ for _ in ()).throw(HardwayError("boom")))
    with pytest.raises(HardwayError, match=r"could not undo 'one' on n \(no\); run `fix-it` there$"):
        proc.run()


def test_ctrl_c_during_a_wait_stops_at_once_and_undoes() -> None:
    log: list[str] = []
    proc = Procedure("task z", QUIET)
    proc.add("n", "first", "", lambda: log.append("first"), undo=lambda: log.append("undo first"))

    def waits() -> None:
        procedure.interrupt()  # what the SIGINT handler does
        procedure.sleep(30)  # wakes at once
        log.append("never")

    proc.add("n", "wait", "", waits)
    with pytest.raises(HardwayError, match=r"^task z: interrupted \(Ctrl-C\) at step 2 \(wait on n\); undone: first"):
        proc.run()
    assert log == ["first", "undo first"]


def test_ctrl_c_in_the_middle_of_a_step_takes_effect_after_it() -> None:
    log: list[str] = []
    proc = Procedure("task w", QUIET)
    proc.add("n", "a command on a node", "", lambda: (procedure.interrupt(), log.append("finished anyway")),
             undo=lambda: log.append("undone"))
    proc.add("n", "next", "", lambda: log.append("next"))
    with pytest.raises(HardwayError, match="interrupted"):
        proc.run()
    assert log == ["finished anyway", "undone"]
