"""Failure drills: each injects one known failure into a lab hardway built, so a learner can watch
`invoke verify` name its cause and fix (`invoke lab.break DRILL`, `--list`, `--undo`).

- ``catalogue``: the drills, one small definition each (what, where, what verify says, inject, undo)
- ``inject``: the helpers drills break and mend with (node commands, certificates lacking a SAN, an
  older cluster's data dir); the slow disk is the host's side: ``hardway.lab.diskio``
- ``run``: refuse unless the lab and the chapter are up, break, undo, the list (table / JSON)

docs/drills.md describes each drill.
"""

from __future__ import annotations

from hardway.drills.catalogue import DRILLS, Drill, by_name
from hardway.drills.inject import Env
from hardway.drills.run import Done, break_lab, format_rows, rows, to_json, undo

__all__ = ["DRILLS", "Done", "Drill", "Env", "break_lab", "by_name", "format_rows", "rows", "to_json", "undo"]
