"""The pytest plugin: options, markers, Hypothesis profiles and the ``neps_*`` fixtures.

Registered through the ``pytest11`` entry point: installing the package is enough.
It loads in every pytest run of a project that installs it, so this module imports
only pytest and the standard library; fixtures import what they use when used.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_neps._reference import REFERENCE

if TYPE_CHECKING:
    from neps_state import NePSState, OptimizationState, OptimizerInfo, Settings
    from pytest_neps._pool import Pool
    from pytest_neps._swarm import SwarmResult
    from pytest_neps.lazyfs import LazyFS
    from pytest_neps.powerloss import CutRun

# The shipped properties assert: let pytest explain their failures. (Nothing above
# imports them, so this comes before they are imported.)
pytest.register_assert_rewrite("pytest_neps.machines", "pytest_neps.races", "pytest_neps.suite")

POOL_SIZE = 6
"""Worker processes of ``neps_pool``: enough for the largest drawn race (6 creators)."""
KEEP_CHOICES = ("never", "on-failure", "always")
START_METHODS = ("spawn", "forkserver", "fork")
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
"""Each test's reports by phase (``setup``, ``call``, ``teardown``), in ``item.stash``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``neps`` option group (each option also has an ini key)."""
    group = parser.getgroup("neps", "NePS state testing (pytest-neps)")
    options: list[tuple[str, str, str, Any]] = [
        ("workers", "neps_workers", "default number of worker processes of a swarm", "4"),
        ("swarm-timeout", "neps_swarm_timeout", "hard timeout of a swarm in seconds", "120"),
        (
            "start-method",
            "neps_start_method",
            "how swarm workers are started: spawn, forkserver or fork",
            "spawn",
        ),
        (
            "keep-run-dirs",
            "neps_keep_run_dirs",
            "keep run directories: never, on-failure or always",
            "on-failure",
        ),
        ("impl", "neps_impl", "state implementation under test, as module:attribute", ""),
        (
            "scheduler",
            "neps_scheduler",
            "run swarm workers as tasks on this Dask scheduler (tcp://HOST:PORT; the dask extra)",
            "",
        ),
    ]
    for flag, ini, help_text, default in options:
        group.addoption(f"--neps-{flag}", dest=ini, default=None, help=f"{help_text} (ini: {ini})")
        parser.addini(ini, help=help_text, default=default)


def option(config: pytest.Config, name: str) -> str:
    """An option's value: the command line first, then the ini file."""
    value = config.getoption(name)
    return str(value if value is not None else config.getini(name))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers, validate options, and the ``neps-*`` profiles when asked for.

    Runs before Hypothesis's own ``pytest_configure``, which loads the profile
    named by ``--hypothesis-profile``.
    """
    config.addinivalue_line("markers", "neps_swarm(**kwargs): default arguments of neps_swarm")
    config.addinivalue_line("markers", "stress: long-running stress test (opt-in)")
    _check_options(config)
    profile = config.getoption("hypothesis_profile", default=None)
    if isinstance(profile, str) and profile.startswith("neps-"):
        from pytest_neps._profiles import register_profiles  # noqa: PLC0415 - only when asked

        register_profiles()


def _usage_error(ini: str, value: str, expected: str) -> pytest.UsageError:
    flag = "--" + ini.replace("_", "-")
    return pytest.UsageError(f"{flag} (ini {ini}) must be {expected}, not {value!r}")


def _check_options(config: pytest.Config) -> None:
    keep = option(config, "neps_keep_run_dirs")
    if keep not in KEEP_CHOICES:
        raise _usage_error("neps_keep_run_dirs", keep, "one of " + ", ".join(KEEP_CHOICES))
    method = option(config, "neps_start_method")
    if method not in START_METHODS:
        raise _usage_error("neps_start_method", method, "one of " + ", ".join(START_METHODS))
    workers = option(config, "neps_workers")
    if not workers.strip().isdigit() or int(workers) < 1:
        raise _usage_error("neps_workers", workers, "a whole number >= 1")
    timeout = option(config, "neps_swarm_timeout")
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise _usage_error("neps_swarm_timeout", timeout, "a number of seconds > 0")
    impl = option(config, "neps_impl")
    if impl and not all(impl.partition(":")[::2]):
        raise _usage_error("neps_impl", impl, "of the form 'package.module:attribute'")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report in ``item.stash``, so fixtures can see failures."""
    report: pytest.TestReport = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(REPORTS, {})
    return any(reports[when].failed for when in ("setup", "call") if when in reports)


@pytest.fixture
def neps_run_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh path for one run directory (not created yet), unique per test:
    shown in the report when the test fails, kept or removed per
    ``--neps-keep-run-dirs`` (default: kept on failure).
    """
    name = re.sub(r"[^\w.-]", "_", request.node.name)[:40]
    base = tmp_path_factory.mktemp(f"neps-{name}", numbered=True)
    path = base / "run"
    yield path
    keep = option(request.config, "neps_keep_run_dirs")
    failed = _failed(request)
    kept = keep == "always" or (keep == "on-failure" and failed)
    if failed:
        note = "kept" if kept else f"removed: --neps-keep-run-dirs={keep}"
        request.node.add_report_section("teardown", "neps run directory", f"{path} ({note})")
    if not kept:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def neps_impl(request: pytest.FixtureRequest) -> str:
    """The state implementation under test, as ``"module:attribute"``: the
    reference ``neps_state:NePSState`` unless ``--neps-impl`` (ini ``neps_impl``)
    names another. Override this fixture to test your own class.
    """
    return option(request.config, "neps_impl") or REFERENCE


@pytest.fixture
def neps_state_factory(neps_run_dir: Path, neps_impl: str) -> Callable[..., NePSState]:
    """Open handles on ``neps_run_dir`` (creating the run on the first call):
    ``factory(optimizer_info=None, optimizer_state=None, settings=None, cls=None)``;
    each call is another handle, as another worker would hold; ``cls`` defaults to
    the implementation under test (``neps_impl``).
    """
    from pytest_neps._impl import DEFAULT_INFO, as_impl  # noqa: PLC0415 - only when used

    def factory(
        *,
        optimizer_info: OptimizerInfo | None = None,
        optimizer_state: OptimizationState | None = None,
        settings: Settings | None = None,
        cls: type[NePSState] | None = None,
    ) -> NePSState:
        impl = as_impl(cls or neps_impl)
        state: NePSState = impl.create(
            neps_run_dir, optimizer_info or DEFAULT_INFO, settings, optimizer_state
        )
        return state

    return factory


@pytest.fixture(scope="module")
def neps_pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A pool of 6 worker processes for the race properties, shared within a test
    module, started with ``--neps-start-method``; closed after the module.
    """
    from pytest_neps._pool import Pool  # noqa: PLC0415 - only when used

    pool = Pool(POOL_SIZE, start_method=option(request.config, "neps_start_method"))
    yield pool
    pool.close()


@pytest.fixture
def neps_state(neps_state_factory: Callable[..., NePSState]) -> NePSState:
    """A state of the implementation under test, created in ``neps_run_dir`` with
    the harness's optimizer info and a fresh optimizer state.
    """
    return neps_state_factory()


@pytest.fixture
def neps_patched() -> Iterator[type[NePSState]]:
    """NePS's own code (``neps.run``, ``neps.status``, ...) on the reference state for
    this test (``neps_state.patch_neps``); NePS's own state again afterwards. Skips
    when NePS is not installed.
    """
    from neps_state import UsageError, neps_patched  # noqa: PLC0415 - only when used

    try:
        with neps_patched() as cls:
            yield cls
    except UsageError as e:
        if "not installed" not in str(e):
            raise
        pytest.skip(str(e))


@pytest.fixture
def neps_lazyfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyFS]:
    """LazyFS mounted on a fresh folder (``.mountpoint``): unsynced writes are
    dropped by ``.power_loss()``, which then mounts again (the reboot). Unmounted
    after the test, pass or fail. Skips, saying how to enable it, without Linux,
    root, /dev/fuse and ``NEPS_LAZYFS`` (a binary) or ``NEPS_LAZYFS_BUILD``.
    """
    from pytest_neps.lazyfs import LazyFS, unavailable  # noqa: PLC0415 - only when used

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"LazyFS: {reason}")
    base = tmp_path_factory.mktemp("lazyfs")
    with LazyFS(base / "backing", base / "mnt") as fs:
        yield fs


@pytest.fixture
def neps_power_cut(neps_lazyfs: LazyFS, neps_impl: str) -> Callable[..., CutRun]:
    """Cut the power under a swarm of the implementation under test, on
    ``neps_lazyfs``: ``neps_power_cut(cut_after=2.0)`` (seconds) or
    ``neps_power_cut(point="update.committed")`` (a fault point) returns a
    ``CutRun``; ``.assert_recovered()`` checks that the next boot loads, keeps every
    acknowledged operation, passes the checker and continues.

    Other keywords are those of ``pytest_neps.powerloss.power_cut``.
    """
    from pytest_neps.powerloss import power_cut  # noqa: PLC0415 - only when used

    def cut(**kwargs: Any) -> CutRun:
        return power_cut(neps_lazyfs, **{"impl": neps_impl, **kwargs})

    return cut


@pytest.fixture
def neps_swarm(
    request: pytest.FixtureRequest, neps_run_dir: Path, neps_impl: str
) -> Callable[..., SwarmResult]:
    """Run worker processes on ``neps_run_dir``: ``neps_swarm(**fields)`` takes
    ``SwarmConfig`` fields (``optimizer``, ``evaluation``, ``trials``,
    ``kill_rate``, ...; defaults from the ``neps_swarm`` marker, then the
    ``--neps-*`` options) and returns a ``SwarmResult``: call
    ``.assert_consistent()``, or read ``.problems()`` and ``.summary()``.

    ``launcher=`` runs the workers elsewhere (e.g. ``pytest_neps.dask.DaskLauncher``);
    ``--neps-scheduler tcp://HOST:PORT`` does so for every swarm of the run.
    """
    from pytest_neps._swarm import SwarmConfig, run_swarm  # noqa: PLC0415 - only when used

    config = request.config
    defaults: dict[str, Any] = {
        "workers": int(option(config, "neps_workers")),
        "timeout": float(option(config, "neps_swarm_timeout")),
        "start_method": option(config, "neps_start_method"),
        "impl": neps_impl,
    }
    for marker in reversed(list(request.node.iter_markers("neps_swarm"))):
        defaults.update(marker.kwargs)
    runs = 0

    scheduler = option(config, "neps_scheduler")

    def run(launcher: Any = None, **overrides: Any) -> SwarmResult:
        nonlocal runs
        runs += 1
        path = neps_run_dir if runs == 1 else neps_run_dir.with_name(f"run{runs}")
        if launcher is not None or not scheduler:
            return run_swarm(SwarmConfig(**{**defaults, **overrides}), path, launcher=launcher)
        from pytest_neps.dask import connect  # noqa: PLC0415 - the dask extra

        with connect(scheduler) as on_dask:
            return run_swarm(SwarmConfig(**{**defaults, **overrides}), path, launcher=on_dask)

    return run
