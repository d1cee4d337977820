"""The front of ``neps-state``: help for every option, clear errors for bad run directories.

``show`` and ``check`` name the path and the problem on one line (no traceback) when
a run directory is missing, a file, or has files that cannot be read; exit codes are
the ones ``--help`` documents.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from neps_test_helpers import make_state, run_cycle

from pytest_neps._checker import Violation, check_run_dir
from pytest_neps.cli import build_parser, main

COMMANDS = [
    "bench",
    "check",
    "conformance",
    "crashstates",
    "doctor",
    "killmatrix",
    "powerloss",
    "repair",
    "show",
    "stress",
]
DENIED = os.strerror(errno.EACCES)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def meaningful_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (
        default in (None, "", argparse.SUPPRESS) or isinstance(default, bool)
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_parser_has_every_command() -> None:
    assert set(COMMANDS) <= set(subparsers())


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{a.dest}: no summary" for a in action._choices_actions if not a.help]
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"neps-state {action.dest}")
    for name, sub in subparsers().items():
        if not (sub.description or "").strip():
            missing.append(f"{name}: no description")
        missing += [
            f"{name} {action.dest}"
            for action in sub._actions
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
        ]
    assert missing == []


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_meaningful_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = one_line(capsys.readouterr().out)
    sub = subparsers()[command]
    with_default = [a for a in sub._actions if meaningful_default(a)]
    for action in with_default:
        formatter = sub.formatter_class(prog=sub.prog)
        formatter.add_argument(action)
        text = one_line(formatter.format_help())
        values = {str(action.default)}
        if isinstance(action.default, float):
            values.add(f"{action.default:g}")
        assert "default" in text, text
        assert any(v in text for v in values), text
        assert text in out
    assert not with_default or "default" in out


@pytest.mark.parametrize("command", ["check", "show"])
def test_help_explains_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out
    for code in ("0: ", "1: ", "2: "):
        assert f"\n  {code}" in out


@pytest.fixture
def not_a_run(tmp_path: Path) -> tuple[Path, Path]:
    """A path that does not exist, and one that is a file."""
    afile = tmp_path / "afile"
    afile.write_text("not a run directory\n")
    return tmp_path / "nonexistent", afile


@pytest.mark.parametrize("command", ["show", "check"])
def test_a_missing_directory_or_a_file_is_one_line_and_exit_2(
    command: str, not_a_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing, afile = not_a_run
    assert main([command, str(missing)]) == 2
    assert capsys.readouterr() == ("", f"neps-state {command}: {missing}: does not exist\n")
    assert main([command, str(afile)]) == 2
    assert capsys.readouterr() == ("", f"neps-state {command}: {afile}: is not a directory\n")
    assert main([command, str(afile / "run")]) == 2
    assert capsys.readouterr().err == f"neps-state {command}: {afile / 'run'}: does not exist\n"


def test_the_checker_tells_missing_from_not_a_directory(
    not_a_run: tuple[Path, Path], tmp_path: Path
) -> None:
    missing, afile = not_a_run
    assert check_run_dir(missing) == [Violation("layout", str(missing), "does not exist")]
    assert check_run_dir(afile) == [Violation("layout", str(afile), "is not a directory")]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(missing)
    [violation] = check_run_dir(dangling)
    assert violation.detail == "is a symbolic link to nothing"


@pytest.fixture
def run(run_dir: Path) -> Path:
    """A run with two trials, the second one crashed (so with an error record)."""
    state = make_state(run_dir)
    run_cycle(state)
    run_cycle(state, error=ValueError("boom"))
    return run_dir


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("file", "is not a folder"),
        ("missing", "is missing"),
        ("symlink", "is a symbolic link (not followed), not a folder"),
    ],
)
def test_configs_that_is_no_folder_is_a_finding_of_show_and_check(
    run: Path, tmp_path: Path, kind: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = run / "configs"
    shutil.move(configs, tmp_path / "elsewhere")
    if kind == "file":
        configs.write_text("a file\n")
    elif kind == "symlink":
        configs.symlink_to(tmp_path / "elsewhere")
    assert main(["show", str(run)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{run}: 0 trials\n")
    assert f"neps-state show: {configs}: {problem}\n" in err
    assert main(["check", str(run)]) == 1
    assert f"[layout] {configs}: {problem}\n" in capsys.readouterr().out


@pytest.fixture
def deny(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Paths added to the set cannot be opened or listed (as for another user's 0600 file).

    Root reads whatever the mode, so the refusal is made here rather than by ``chmod``.
    """
    denied: set[str] = set()
    real_open, real_scandir = os.open, os.scandir

    def refuse(path: str | os.PathLike[str]) -> None:
        if os.path.abspath(path) in denied:
            raise PermissionError(errno.EACCES, DENIED, os.fspath(path))

    def fake_open(
        path: str | os.PathLike[str], flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_scandir(path: str | os.PathLike[str] = ".") -> Iterator[os.DirEntry[str]]:
        refuse(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    return denied


UNREADABLE = {
    "configs/config_0/metadata.json": "1 trials",
    "configs/config_1/report.yaml": "1 trials",
    "configs/.trial_cache.journal": "2 trials",
    "shared_errors.jsonl": "2 trials",
    "configs": "0 trials",
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_show_shows_what_it_can_and_names_what_it_cannot_read(
    run: Path, deny: set[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run / name
    deny.add(str(path))
    assert main(["show", str(run)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{run}: {UNREADABLE[name]}\n")
    assert f"neps-state show: {path}: cannot be read: {DENIED}\n" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", [*UNREADABLE, "optimizer_info.yaml", "optimizer_state.pkl"])
def test_check_reports_an_unreadable_file_as_a_violation(
    run: Path, deny: set[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run / name
    deny.add(str(path))
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"[files readable] {path}: cannot be read: {DENIED}\n" in out
    assert "not a neps_state journal" not in out


@pytest.mark.parametrize("command", ["show", "check"])
def test_an_unreadable_run_directory_is_one_line_and_exit_2(
    run: Path, deny: set[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deny.add(str(run))
    assert main([command, str(run)]) == 2
    assert capsys.readouterr() == ("", f"neps-state {command}: {run}: cannot be read: {DENIED}\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_named_by_show_and_check(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = run / "configs" / "config_0" / "metadata.json"
    meta.chmod(0)
    assert main(["show", str(run)]) == 1
    assert f"{meta}: cannot be read: {DENIED}\n" in capsys.readouterr().err
    assert main(["check", str(run)]) == 1
    assert f"[files readable] {meta}: cannot be read: {DENIED}\n" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["show", "check"])
def test_the_command_reports_bad_run_directories_without_a_traceback(
    run: Path, tmp_path: Path, command: str
) -> None:
    def neps_state(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pytest_neps.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    missing = neps_state(command, str(tmp_path / "nonexistent"))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == f"neps-state {command}: {tmp_path / 'nonexistent'}: does not exist\n"
    shutil.rmtree(run / "configs")
    (run / "configs").write_text("a file\n")
    configs_a_file = neps_state(command, str(run))
    assert configs_a_file.returncode == 1
    assert f"{run / 'configs'}: is not a folder" in configs_a_file.stdout + configs_a_file.stderr
    assert "Traceback" not in configs_a_file.stderr


def test_conformance_says_when_pytest_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named pytest' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert main(["conformance", "--python", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "did not run the suite" in err
    assert "No module named pytest" in err


def test_help_never_breaks_a_path_at_its_hyphens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse wraps at hyphens by default: a venv under ".../my-project/" came out as
    # "my-" and "project/..." on two lines, which no one can copy (and the test above missed)
    python = "/home/someone/work/a-rather-long-checkout-path/my-project/.venv/bin/python3"
    monkeypatch.setattr(sys, "executable", python)
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    out = capsys.readouterr().out
    assert f"{python})" in out.split(), out
