"""The README and the docs, as written: their examples run, their links and tables hold."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
from pathlib import Path

import pytest

from pytest_neps._swarm import SwarmConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def blocks(path: Path) -> list[str]:
    """The ```python blocks of a markdown file."""
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def named_block(first_line: str) -> str:
    found = [b for b in blocks(README) if b.startswith(first_line)]
    assert len(found) == 1, f"README.md has {len(found)} blocks starting {first_line!r}"
    return found[0]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_python_block_compiles(path: Path) -> None:
    for block in blocks(path):
        compile(block, str(path), "exec")


def test_the_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(named_block("import time\n"), {"__name__": "readme_tour"})  # noqa: S102
    assert out.getvalue().strip() == "success"  # a state prints as its value, as NePS's
    assert (tmp_path / "runs" / "my-run" / "configs" / "config_0" / "report.yaml").is_file()


def test_the_conformance_module_passes_under_plain_pytest(pytester: pytest.Pytester) -> None:
    """Under Hypothesis's default profile (200 ms deadline): the suite's own settings hold."""
    module = named_block("# tests/test_conformance.py\n")
    pytester.makepyfile(test_conformance=module)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hypothesis-profile=default", "-k", "creation_race"
    )
    result.assert_outcomes(passed=1)


def test_without_its_settings_the_suite_fails_there(pytester: pytest.Pytester) -> None:
    """The negative control of the test above: the same property, without ``SETTINGS``."""
    source = (ROOT / "pytest_neps" / "suite.py").read_text(encoding="utf-8")
    assert "\n@SETTINGS\n" in source
    pytester.makepyfile(test_bare=source.replace("\n@SETTINGS\n", "\n"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hypothesis-profile=default", "-k", "creation_race"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DeadlineExceeded*"])


def test_the_neps_optimizer_example_runs(pytester: pytest.Pytester) -> None:
    if importlib.util.find_spec("neps") is None:
        pytest.skip("needs upstream NePS: pip install -e '.[neps]' (see README)")
    pytester.makepyfile(test_neps_optimizer=named_block("# tests/test_neps_optimizer.py\n"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--neps-swarm-timeout=900")
    result.assert_outcomes(passed=1)


def test_links_to_docs_exist() -> None:
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", README.read_text())
    assert "docs/design.md" in links
    for link in links:
        assert (ROOT / link).is_file(), link
    for doc in DOCS:
        for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", doc.read_text()):
            assert (doc.parent / link).is_file(), f"{doc.name}: {link}"


def test_every_swarm_config_field_is_documented() -> None:
    text = (ROOT / "docs" / "plugin.md").read_text()
    for f in dataclasses.fields(SwarmConfig):
        assert f"`{f.name}`" in text, f.name


def test_the_readme_starts_with_the_two_commands() -> None:
    commands = re.findall(r"^    (python3 -m venv .*)$", README.read_text(), re.MULTILINE)[:2]
    assert commands[0].endswith("neps-state stress --workers 4 --trials 1000 --kill-rate 0.01")
    assert commands[1].endswith("pytest -n 2")
    assert os.path.isfile(ROOT / ".ci" / "run")
