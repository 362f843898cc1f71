"""The chapter-by-chapter walkthrough (`invoke chapter`): the tutorial's 13 chapters mapped onto hardway's,
each one's state from its checks, what it puts where, how to type it by hand, and what it would change.

tutorial.py (the map), progress.py (states), view.py (files, commands, changes), manual.py (the typed
commands: pure), report.py (text and JSON).
"""

from hardway.walkthrough.progress import DONE, FAILING, NOT_STARTED, SKIPPED, ChapterState, first_not_done, states
from hardway.walkthrough.tutorial import CHAPTERS, TutorialChapter, find

__all__ = ["CHAPTERS", "DONE", "FAILING", "NOT_STARTED", "SKIPPED", "ChapterState", "TutorialChapter", "find",
           "first_not_done", "states"]
