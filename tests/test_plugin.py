"""The pytest plugin, tested the way pytest plugins are: pytester projects in a subprocess.

Every project runs in a fresh interpreter (``runpytest_subprocess``), which loads
the plugin through its ``pytest11`` entry point only, as a downstream project would.
Swarm workers are spawned processes: the downstream module lives in the pytester
directory, which is put on ``PYTHONPATH`` so that they can import it by name.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pytest_neps import plugin

README = Path(__file__).resolve().parents[1] / "README.md"
README_SECTION = "## Testing your own optimizer"

OPTIONS = (
    "--neps-workers",
    "--neps-swarm-timeout",
    "--neps-start-method",
    "--neps-keep-run-dirs",
    "--neps-impl",
)
FIXTURES = ("neps_run_dir", "neps_state", "neps_state_factory", "neps_swarm", "neps_impl")
STALE = "pytest_neps.controls:StaleCacheRead"

# A downstream project's own optimizer and evaluations (importable by spawned workers).
DOWNSTREAM = """
import os
import random
import time
from pathlib import Path

from neps_state import SampledConfig

PARENTS = Path(__file__).parent / "parents"


def my_optimizer(trials, budget_info, n=None):
    first = len(trials)
    configs = [
        SampledConfig(id=str(first + i), config={"x": random.random()}) for i in range(n or 1)
    ]
    return configs[0] if n is None else configs


def evaluate(config):
    return config["x"] ** 2


def slow_evaluate(config):
    time.sleep(0.005)  # workers interleave even on a loaded machine
    return config["x"]


def evaluate_noting_parent(config):
    PARENTS.mkdir(exist_ok=True)
    (PARENTS / str(os.getppid())).touch()
    return config["x"]


def exploding_optimizer(trials, budget_info, n=None):
    raise ValueError("my optimizer exploded: no more ideas")
"""

# Records each test's run directory in records/<name>, so the outer test can check them.
RECORDER = """
from pathlib import Path

RECORDS = Path(__file__).parent / "records"


def record(name, path):
    RECORDS.mkdir(exist_ok=True)
    (RECORDS / name).write_text(str(path))
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester project with the downstream modules, importable by spawned workers."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    pytester.makepyfile(downstream=DOWNSTREAM, recorder=RECORDER)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)


def records(pytester: pytest.Pytester) -> dict[str, Path]:
    folder = pytester.path / "records"
    return {p.name: Path(p.read_text()) for p in folder.iterdir()} if folder.exists() else {}


def failure_sections(result: pytest.RunResult) -> dict[str, str]:
    """The FAILURES section of the output, split by test name."""
    text = result.stdout.str()
    parts = re.split(r"^_{3,} (\S+) _{3,}$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def names_a_finding(text: str) -> bool:
    """A lost worker with its exception's name, or a violated invariant by name."""
    lost = re.search(r"worker lost: w\S+ \(pid \d+\): raised \w+(Error|Exception)\b", text)
    invariant = re.search(r"^E\s+\[[\w =]+\] \S+", text, re.MULTILINE)
    return bool(lost or invariant)


def trial_folders(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "configs").glob("config_*")}


# --- registration: options, fixtures, markers, Hypothesis profiles ---------------------------


def test_help_shows_the_neps_group_with_every_option_and_ini_key(project: pytest.Pytester):
    result = run(project, "--help")
    assert result.ret == 0
    lines = result.stdout.lines
    start = lines.index("NePS state testing (pytest-neps):")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and lines[i][0] != " ")
    group = "\n".join(lines[start:end])
    for flag in OPTIONS:
        assert f"  {flag}=" in group, flag
        ini = flag[2:].replace("-", "_")
        assert f"(ini: {ini})" in " ".join(group.split()), ini
        result.stdout.fnmatch_lines([f"  {ini} (*):*"])
    assert "spawn, forkserver or fork" in " ".join(group.split())
    assert "never, on-failure or always" in " ".join(group.split())


def test_fixtures_are_listed_with_their_documentation(project: pytest.Pytester):
    project.makepyfile(test_nothing="def test_nothing(): pass")
    result = run(project, "--fixtures")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*fixtures defined from pytest_neps.plugin*"])
    for name in FIXTURES:
        doc = getattr(plugin, name).__doc__
        assert doc, f"{name} has no docstring"
        first = doc.strip().splitlines()[0]
        result.stdout.fnmatch_lines([f"{name}* -- *pytest_neps*plugin.py:*", f"    {first}"])


def test_markers_are_registered(project: pytest.Pytester):
    project.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.stress
        @pytest.mark.neps_swarm(workers=2, trials=10)
        def test_marked(request):
            marker = request.node.get_closest_marker("neps_swarm")
            assert marker.kwargs == {"workers": 2, "trials": 10}
        """
    )
    result = run(project, "--strict-markers", "-W", "error")
    result.assert_outcomes(passed=1, warnings=0)
    assert "warning" not in result.stdout.str().lower()
    assert "Unknown" not in result.stdout.str() + result.stderr.str()

    listed = run(project, "--markers")
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(["@pytest.mark.neps_swarm(**kwargs):*", "@pytest.mark.stress:*"])


def test_hypothesis_profiles_are_registered_and_selectable(project: pytest.Pytester):
    project.makepyfile(
        test_profile="""
        import hypothesis

        def test_profile():
            print("max_examples =", hypothesis.settings().max_examples)
            for name in ("neps-ci", "neps-dev", "neps-stress"):
                assert hypothesis.settings.get_profile(name).deadline is None
        """
    )
    result = run(project, "-s", "--hypothesis-profile=neps-stress")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*max_examples = 400*"])

    unknown = run(project, "--hypothesis-profile=neps-nope")
    assert unknown.ret != 0
    assert "'neps-nope' is not registered" in unknown.stdout.str() + unknown.stderr.str()


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        (["--neps-keep-run-dirs=sometimes"], "", "--neps-keep-run-dirs*'sometimes'"),
        (["--neps-start-method=thread"], "", "--neps-start-method*'thread'"),
        ([], "neps_workers = 0", "*neps_workers*'0'"),
        ([], "neps_swarm_timeout = soon", "*neps_swarm_timeout*'soon'"),
        (["--neps-impl=neps_state.NePSState"], "", "--neps-impl*'neps_state.NePSState'"),
    ],
    ids=["keep", "start-method", "ini-workers", "ini-timeout", "impl"],
)
def test_bad_option_values_are_usage_errors(
    project: pytest.Pytester, args: list[str], ini: str, expected: str
):
    project.makeini(f"[pytest]\n{ini}\n")
    project.makepyfile(test_nothing="def test_nothing(): pass")
    result = run(project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {expected}"])


def test_ini_values_are_honoured_and_the_marker_overrides_them(project: pytest.Pytester):
    project.makeini(
        "[pytest]\nneps_workers = 2\nneps_start_method = forkserver\nneps_swarm_timeout = 90\n"
    )
    project.makepyfile(
        test_ini="""
        import os
        import shutil

        import pytest

        from downstream import PARENTS

        def swarm(neps_swarm):
            shutil.rmtree(PARENTS, ignore_errors=True)
            result = neps_swarm(
                optimizer="downstream:my_optimizer",
                evaluation="downstream:evaluate_noting_parent",
                trials=20,
            )
            result.assert_consistent()
            assert len(result.trials) == result.cycles == 20
            return result, {int(p.name) for p in PARENTS.iterdir()}

        def test_ini(neps_swarm):
            result, parents = swarm(neps_swarm)
            assert (result.config.workers, result.config.start_method) == (2, "forkserver")
            assert result.config.timeout == 90
            assert len([w for w in result.workers if w.replaces is None]) == 2
            assert parents and os.getpid() not in parents  # forked by the fork server

        @pytest.mark.neps_swarm(workers=3, start_method="spawn")
        def test_marker(neps_swarm):
            result, parents = swarm(neps_swarm)
            assert (result.config.workers, result.config.start_method) == (3, "spawn")
            assert len(result.workers) == 3
            assert parents == {os.getpid()}  # spawned by this process
        """
    )
    result = run(project, "-v")
    result.assert_outcomes(passed=2)


# --- neps_run_dir ---------------------------------------------------------------------------


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_run_dirs_are_fresh_and_unique_per_test(project: pytest.Pytester, xdist: list[str]):
    project.makepyfile(
        test_dirs="""
        import pytest
        from recorder import record

        @pytest.mark.parametrize("i", range(4))
        def test_dir(neps_run_dir, i):
            assert not neps_run_dir.exists()
            neps_run_dir.mkdir()
            (neps_run_dir / "owner").write_text(str(i))
            record(str(i), neps_run_dir)
        """
    )
    result = run(project, "--neps-keep-run-dirs=always", *xdist)
    result.assert_outcomes(passed=4)
    paths = records(project)
    assert sorted(paths) == ["0", "1", "2", "3"]
    assert len(set(paths.values())) == 4
    for i, path in paths.items():
        assert (path / "owner").read_text() == i


KEEP_PROJECT = """
from recorder import record

def test_passes(neps_run_dir):
    neps_run_dir.mkdir()
    record("passes", neps_run_dir)

def test_fails(neps_run_dir):
    neps_run_dir.mkdir()
    record("fails", neps_run_dir)
    assert False, "this test fails on purpose"
"""


@pytest.mark.parametrize(
    ("args", "ini", "kept"),
    [
        ([], "", {"fails"}),
        (["--neps-keep-run-dirs=always"], "", {"passes", "fails"}),
        (["--neps-keep-run-dirs=never"], "", set()),
        ([], "neps_keep_run_dirs = always", {"passes", "fails"}),
        (["--neps-keep-run-dirs=on-failure"], "neps_keep_run_dirs = never", {"fails"}),
    ],
    ids=["default", "always", "never", "ini-always", "cli-over-ini"],
)
def test_run_dirs_are_kept_as_asked(
    project: pytest.Pytester, args: list[str], ini: str, kept: set[str]
):
    project.makeini(f"[pytest]\n{ini}\n")
    project.makepyfile(test_keep=KEEP_PROJECT)
    result = run(project, *args)
    result.assert_outcomes(passed=1, failed=1)
    paths = records(project)
    assert {name for name, path in paths.items() if path.exists()} == kept
    out = result.stdout.str()
    assert str(paths["fails"]) in failure_sections(result)["test_fails"]
    assert str(paths["passes"]) not in out
    note = "(kept)" if "fails" in kept else "(removed: --neps-keep-run-dirs=never)"
    result.stdout.fnmatch_lines(["*neps run directory*", f"{paths['fails']} {note}"])


# --- neps_state and neps_state_factory ------------------------------------------------------


def test_state_and_factory(project: pytest.Pytester):
    project.makepyfile(
        test_state="""
        import time

        import pytest

        from neps_state import (
            BudgetInfo, NePSState, OptimizationState, OptimizerInfo,
            OptimizerInfoMismatchError, SeedSnapshot, Trial,
        )
        from pytest_neps import random_search

        def test_created_in_the_run_dir(neps_state, neps_run_dir):
            assert type(neps_state) is NePSState
            assert neps_state.path == neps_run_dir
            assert (neps_run_dir / "optimizer_info.yaml").is_file()
            assert neps_state.lock_and_get_optimizer_info().name
            assert neps_state.lock_and_get_optimizer_state().budget is None
            assert neps_state.all_trial_ids() == []

        def test_two_handles_see_each_other(neps_state, neps_state_factory):
            other = neps_state_factory()
            assert other is not neps_state
            neps_state.lock_and_sample_trial(random_search, worker_id="a")
            assert other.all_trial_ids() == ["0"]
            trial = other.lock_and_claim_next_pending_trial("b")
            assert trial is not None and trial.id == "0"
            assert neps_state.lock_and_claim_next_pending_trial("a") is None
            report = trial.set_complete(
                report_as="success", time_end=time.time(), objective_to_minimize=0.5,
                cost=1.0, learning_curve=None, err=None, tb=None, extra={},
                evaluation_duration=0.1,
            )
            other.lock_and_report_trial_evaluation(trial, report, worker_id="b")
            seen = neps_state.lock_and_get_trial_by_id("0")
            assert seen.metadata.state is Trial.State.SUCCESS
            assert seen.metadata.evaluating_worker_id == "b"

        def test_factory_with_a_custom_info_and_state(neps_state_factory):
            mine = OptimizerInfo(name="my-bo", info={"acquisition": "ei", "seed": 1})
            opt_state = OptimizationState(
                budget=BudgetInfo(max_evaluations=7), seed_snapshot=SeedSnapshot.new_capture()
            )
            state = neps_state_factory(optimizer_info=mine, optimizer_state=opt_state)
            assert state.lock_and_get_optimizer_info() == mine
            assert state.lock_and_get_optimizer_state().budget.max_evaluations == 7
            same = OptimizerInfo(name="my-bo", info={"seed": 1, "acquisition": "ei"})
            assert neps_state_factory(optimizer_info=same).all_trial_ids() == []
            other = OptimizerInfo(name="my-bo", info={"acquisition": "ucb"})
            with pytest.raises(OptimizerInfoMismatchError):
                neps_state_factory(optimizer_info=other)
            with pytest.raises(OptimizerInfoMismatchError):
                neps_state_factory()  # the default info is another one too

        def test_a_swarm_runs_on_the_prepared_state(neps_state, neps_swarm):
            neps_state.lock_and_sample_trial(random_search, worker_id="setup")
            result = neps_swarm(workers=2, trials=6)
            result.assert_consistent()
            first = result.trials["0"].metadata
            assert (first.sampling_worker_id, first.state) == ("setup", Trial.State.SUCCESS)
        """
    )
    result = run(project, "-v")
    result.assert_outcomes(passed=4)


# --- neps_swarm -----------------------------------------------------------------------------

SWARMS = f"""
import pytest

pytestmark = pytest.mark.neps_swarm(
    workers=2, trials=30, optimizer="downstream:my_optimizer", evaluation="downstream:evaluate"
)

def test_my_optimizer(neps_swarm, neps_run_dir):
    result = neps_swarm()
    result.assert_consistent()
    assert result.run_dir == neps_run_dir
    assert len(result.trials) == result.cycles == 30
    assert {{t.metadata.state.value for t in result.trials.values()}} == {{"success"}}

def test_my_optimizer_with_kills(neps_swarm):
    result = neps_swarm(kill_rate=0.05, seed=4, max_kills=2)
    result.assert_consistent()
    assert result.kills >= 1 and result.replacements == result.kills

def test_crashing_evaluation_is_an_outcome(neps_swarm):
    result = neps_swarm(evaluation="pytest_neps._evaluate:always_crashes")
    result.assert_consistent()
    assert {{t.metadata.state.value for t in result.trials.values()}} == {{"crashed"}}
    assert sorted(e.trial_id for e in result.errors.errs) == sorted(result.trials)
    assert {{e.err_type for e in result.errors.errs}} == {{"ZeroDivisionError"}}

def test_broken_state(neps_swarm):
    neps_swarm(
        impl="{STALE}", workers=3, trials=40, evaluation="downstream:slow_evaluate"
    ).assert_consistent()

def test_exploding_optimizer(neps_swarm):
    neps_swarm(optimizer="downstream:exploding_optimizer").assert_consistent()
"""


def test_swarms_pass_and_fail_with_readable_messages(project: pytest.Pytester):
    project.makepyfile(test_swarms=SWARMS)
    result = run(project)
    result.assert_outcomes(passed=3, failed=2)
    failures = failure_sections(result)
    assert sorted(failures) == ["test_broken_state", "test_exploding_optimizer"]

    broken = failures["test_broken_state"]
    assert re.search(r"AssertionError: swarm on \S+ is not consistent \(\d+ problems?\)", broken)
    assert names_a_finding(broken)
    assert "neps run directory" in broken

    exploding = failures["test_exploding_optimizer"]
    assert re.search(r"worker lost: w\d+ \(pid \d+\): raised ValueError", exploding)
    assert "my optimizer exploded: no more ideas" in exploding
    assert "exploding_optimizer" in exploding  # the optimizer's traceback
    assert "budget: 0 trials, expected 30" in exploding


def test_neps_impl_switches_the_state_under_test(project: pytest.Pytester):
    project.makepyfile(
        test_impl=f"""
        def test_state_is_switched(neps_impl, neps_state):
            assert neps_impl == "{STALE}"
            assert type(neps_state).__name__ == "StaleCacheRead"

        def test_my_optimizer(neps_swarm):
            neps_swarm(
                workers=3, trials=40,
                optimizer="downstream:my_optimizer", evaluation="downstream:slow_evaluate",
            ).assert_consistent()
        """
    )
    result = run(project, f"--neps-impl={STALE}")
    result.assert_outcomes(passed=1, failed=1)
    failure = failure_sections(result)["test_my_optimizer"]
    assert names_a_finding(failure)
    assert "is not consistent" in failure


def test_swarms_under_xdist_do_not_collide(project: pytest.Pytester):
    project.makepyfile(
        test_parallel="""
        import pytest
        from recorder import record

        @pytest.mark.parametrize("i", range(4))
        def test_swarm(neps_swarm, i):
            result = neps_swarm(
                workers=2, trials=20 + i,
                optimizer="downstream:my_optimizer", evaluation="downstream:evaluate",
            )
            result.assert_consistent()
            record(str(i), result.run_dir)
        """
    )
    result = run(project, "-n", "2", "--neps-keep-run-dirs=always")
    result.assert_outcomes(passed=4)
    paths = records(project)
    assert len(set(paths.values())) == 4
    for i, path in paths.items():
        assert trial_folders(path) == {f"config_{k}" for k in range(20 + int(i))}


# --- the README's example -------------------------------------------------------------------


def readme_example() -> dict[str, str]:
    """The README section's python blocks, by the file named in their first line."""
    text = README.read_text(encoding="utf-8")
    section = re.search(
        rf"^{re.escape(README_SECTION)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL
    )
    assert section, f"README.md has no section {README_SECTION!r}"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    files = {}
    for block in blocks:
        first = block.splitlines()[0]
        assert first.startswith("# "), f"a README block does not name its file: {first!r}"
        files[first[2:].strip()] = block
    return files


def test_readme_example_runs(project: pytest.Pytester):
    files = readme_example()
    assert sorted(files) == ["my_project/opt.py", "tests/test_my_optimizer.py"]
    assert "neps_swarm(" in files["tests/test_my_optimizer.py"]
    for name, code in files.items():
        path = project.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code), encoding="utf-8")
    (project.path / "my_project" / "__init__.py").touch()
    result = run(project, "-v", "--neps-workers=2", "tests")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_my_optimizer_under_races PASSED*"])


def test_every_test_of_the_suite_is_exported() -> None:
    # A conformance module imports the suite with `import *`: a test left out of
    # __all__ never runs there (three were, for a while).
    from pytest_neps import suite  # noqa: PLC0415

    tests = sorted(name for name in vars(suite) if name.startswith("test_"))
    assert sorted(suite.__all__) == tests
