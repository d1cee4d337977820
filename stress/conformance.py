"""The conformance suite's verdict on one implementation: which seed defects, and what else.

    python stress/conformance.py --impl pytest_neps.upstream:UpstreamNePSState [--runs 5]

Runs the suite (``pytest_neps.suite``, the ``neps-ci`` budget, 2 xdist workers)
against ``--impl`` in a fresh pytest process ``--runs`` times and reads each run's
JUnit report: for each test, whether it failed and which seed defects (D1-D9) its
failure names. Prints, per defect, in how many runs it was reported; and every
failure that names no defect (each one is a false alarm or a defect the
catalogue lacks). Use the interpreter of the environment the implementation
lives in (``--python``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_neps.defects import DEFECTS, named

MODULE = "from pytest_neps.suite import *  # noqa: F403\n"


def run_once(impl: str, python: str, workdir: Path) -> dict[str, list[str] | None]:
    """Test name -> the defects its failure names (None: it passed or was skipped)."""
    (workdir / "test_conformance.py").write_text(MODULE)
    report = workdir / "report.xml"
    command = [
        python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
        "--hypothesis-profile=neps-ci", f"--neps-impl={impl}", f"--junitxml={report}",
        "-W", "ignore::DeprecationWarning", "test_conformance.py",
    ]  # fmt: skip
    subprocess.run(command, cwd=workdir, capture_output=True, check=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, help="module:attribute of the state class")
    parser.add_argument("--runs", type=int, default=5, help="runs of the suite (default 5)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run it with")
    args = parser.parse_args()
    reported: collections.Counter[str] = collections.Counter()
    unexplained: list[str] = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            results = run_once(args.impl, args.python, Path(tmp))
        failed = {name: d for name, d in results.items() if d is not None}
        for name, defects in sorted(failed.items()):
            if not defects:
                unexplained.append(f"run {k + 1}: {name}")
        reported.update({d for defects in failed.values() for d in defects or []})
        print(f"run {k + 1}: {len(results)} tests, {len(failed)} failed", flush=True)
    for defect, what in DEFECTS.items():
        print(f"{defect} reported in {reported[defect]} of {args.runs} runs  ({what})")
    print(f"failures naming no defect: {len(unexplained)}")
    for line in unexplained:
        print(f"  {line}")


if __name__ == "__main__":
    main()
