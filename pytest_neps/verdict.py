"""The conformance suite's verdict on one implementation: which seed defects, and what else.

    neps-state conformance --impl pytest_neps.upstream:UpstreamNePSState [--runs 5]

Runs the suite (``pytest_neps.suite``, the ``neps-ci`` budget, 2 xdist workers)
against ``--impl`` in a fresh pytest process ``--runs`` times and reads each run's
JUnit report: for each test, whether it failed and which known defects (D1-D11) its
failure names. Prints, per defect, in how many runs it was reported; and every
failure that names no defect (each one is a false alarm or a defect the
catalogue lacks). Use the interpreter of the environment the implementation
lives in (``--python``).
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from pytest_neps.defects import DEFECTS, named

logger = logging.getLogger(__name__)

MODULE = "from pytest_neps.suite import *  # noqa: F403\n"


class SuiteDidNotRunError(RuntimeError):
    """pytest did not run the suite (not installed, or it failed to start)."""


def run_once(impl: str, python: str, workdir: Path) -> dict[str, list[str] | None]:
    """Test name -> the defects its failure names (None: it passed or was skipped)."""
    (workdir / "test_conformance.py").write_text(MODULE)
    report = workdir / "report.xml"
    command = [
        python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
        "--hypothesis-profile=neps-ci", f"--neps-impl={impl}", f"--junitxml={report}",
        "-W", "ignore::DeprecationWarning", "test_conformance.py",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    if not report.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SuiteDidNotRunError(
            f"{python} -m pytest did not run the suite (it needs the test extra:"
            f" pip install 'neps-state[test]'): {tail[0]}"
        )
    out: dict[str, list[str] | None] = {}
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 - our own pytest wrote it
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        text = None if failure is None else f"{failure.get('message')}\n{failure.text}"
        out[case.get("name", "?")] = None if text is None else _first_defects(text)
    return out


def _first_defects(text: str) -> list[str]:
    """The defects a failure names, the first one first."""
    found = named(text)
    return sorted(found, key=lambda d: text.index(f"{d} ("))


@dataclass
class Verdict:
    """What ``runs`` runs of the suite reported."""

    runs: int
    reported: collections.Counter[str] = field(default_factory=collections.Counter)
    """Defect -> runs in which a failure named it."""
    unexplained: list[str] = field(default_factory=list)
    """Failures that name no defect, as ``"run K: test"``."""
    tests: int = 0

    def render(self) -> str:
        """One line per defect, then the unexplained failures."""
        lines = [
            f"{d} reported in {self.reported[d]} of {self.runs} runs  ({what})"
            for d, what in DEFECTS.items()
        ]
        lines.append(f"failures naming no defect: {len(self.unexplained)}")
        lines += [f"  {u}" for u in self.unexplained]
        return "\n".join(lines)


def verdict(impl: str, *, runs: int = 1, python: str = sys.executable) -> Verdict:
    """Run the suite ``runs`` times against ``impl``; what it reported."""
    out = Verdict(runs)
    for k in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            results = run_once(impl, python, Path(tmp))
        out.tests = len(results)
        failed = {name: d for name, d in results.items() if d is not None}
        out.unexplained += [f"run {k + 1}: {name}" for name, d in sorted(failed.items()) if not d]
        out.reported.update({d for defects in failed.values() for d in defects or []})
        logger.info("run %d: %d tests, %d failed", k + 1, len(results), len(failed))
    return out
