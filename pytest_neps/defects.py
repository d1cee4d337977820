"""The known defects (D1-D9 of the seed design, D10 of NePS 0.17) the suite names.

A property of the suite that sees the symptom of one of these fails with
:func:`finding`, whose message starts with the defect's id and says what it is,
so a report on another implementation reads as a list of known defects (and
anything else stands out). ``pytest_neps.controls`` holds one deliberately
broken state per defect, and the project's tests check that each is reported.
"""

from __future__ import annotations

DEFECTS: dict[str, str] = {
    "D1": "a read after the trial cache was lost returns no trials",
    "D2": "create_or_load checks the optimizer info without a lock and writes in place",
    "D3": "the optimizer state is rewritten in place while others read it",
    "D4": "a torn cache tail (a crash mid-append) breaks later readers",
    "D5": "trial ids are used as path parts unchecked",
    "D6": "an unreadable file surfaces as a raw error, not a typed one naming the file",
    "D7": "taking the next pending trial and marking it evaluating are two critical sections",
    "D8": "every operation reads the whole cache: a cycle's cost grows with the run",
    "D9": "a new trial's cache record is written before its folder exists",
    "D10": "resetting or removing one trial by id loses other trials or their error records",
    "D11": "a report and its error record are two commits: a crash between them loses one",
}


def finding(defect: str, detail: str) -> AssertionError:
    """The failure of a property that saw ``defect``: ``"D5 (what it is): detail"``."""
    return AssertionError(f"{defect} ({DEFECTS[defect]}): {detail}")


def named(text: str) -> list[str]:
    """The defects a failure message names."""
    return [d for d in DEFECTS if f"{d} (" in text]


def unexplained(problems: list[str]) -> list[str]:
    """The problems that name no known defect: on an implementation that has some, false alarms."""
    return [p for p in problems if not named(p)]
