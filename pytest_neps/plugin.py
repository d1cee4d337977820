"""The pytest plugin: options, markers, Hypothesis profiles and the ``neps_*`` fixtures.

Registered through the ``pytest11`` entry point: installing the package is enough.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from neps_state import NePSState, OptimizationState, OptimizerInfo, Settings
from pytest_neps._impl import DEFAULT_INFO, as_impl
from pytest_neps._pool import Pool
from pytest_neps._swarm import SwarmConfig, SwarmResult, run_swarm

if TYPE_CHECKING:
    from pytest_neps.lazyfs import LazyFS
    from pytest_neps.powerloss import CutRun

# The shipped properties assert: let pytest explain their failures. (Nothing above
# imports them, so this comes before they are imported.)
pytest.register_assert_rewrite("pytest_neps.machines", "pytest_neps.races", "pytest_neps.suite")

POOL_SIZE = 6
"""Worker processes of ``neps_pool``: enough for the largest drawn race (6 creators)."""
KEEP_CHOICES = ("never", "on-failure", "always")
START_METHODS = ("spawn", "forkserver", "fork")

# Profiles are registered at import: Hypothesis reads --hypothesis-profile in its
# own pytest_configure, which may run before ours.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "neps-ci", max_examples=25, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
)
settings.register_profile(
    "neps-dev", max_examples=10, deadline=None, suppress_health_check=_SLOW_OK
)
settings.register_profile(
    "neps-stress",
    max_examples=400,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)

REFERENCE_IMPL = "neps_state:NePSState"


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
    ]
    for flag, ini, help_text, default in options:
        group.addoption(f"--neps-{flag}", dest=ini, default=None, help=f"{help_text} (ini: {ini})")
        parser.addini(ini, help=help_text, default=default)


def option(config: pytest.Config, name: str) -> str:
    """An option's value: the command line first, then the ini file."""
    value = config.getoption(name)
    return str(value if value is not None else config.getini(name))


def pytest_configure(config: pytest.Config) -> None:
    """Register markers and validate options."""
    config.addinivalue_line("markers", "neps_swarm(**kwargs): default arguments of neps_swarm")
    config.addinivalue_line("markers", "stress: long-running stress test (opt-in)")
    _check_options(config)


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
    """Remember each phase's report on the item, so fixtures can see failures."""
    report: pytest.TestReport = yield
    setattr(item, f"_neps_report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"_neps_report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def neps_run_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh, empty path for one run directory (not created yet), unique per test.

    On failure its location is added to the report; it is kept or removed
    according to ``--neps-keep-run-dirs``.
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
    """The state implementation under test, as ``"module:attribute"``.

    The reference ``neps_state:NePSState`` unless ``--neps-impl`` (ini ``neps_impl``)
    names another; override this fixture to test your own class.
    """
    return option(request.config, "neps_impl") or REFERENCE_IMPL


@pytest.fixture
def neps_state_factory(neps_run_dir: Path, neps_impl: str) -> Callable[..., NePSState]:
    """Open (or create) handles on the test's run directory.

    ``factory(optimizer_info=None, optimizer_state=None, settings=None, cls=None)``;
    each call is another handle, as another worker would hold. ``cls`` defaults to
    the implementation under test (``neps_impl``).
    """

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
    """A pool of worker processes for the race properties, shared within a module."""
    pool = Pool(POOL_SIZE, start_method=option(request.config, "neps_start_method"))
    yield pool
    pool.close()


@pytest.fixture
def neps_state(neps_state_factory: Callable[..., NePSState]) -> NePSState:
    """A ``NePSState`` created in ``neps_run_dir`` with a default optimizer info and state."""
    return neps_state_factory()


@pytest.fixture
def neps_lazyfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyFS]:
    """LazyFS mounted on a fresh folder (its ``mountpoint``), unmounted after the test.

    A file system that keeps unsynced writes in a cache it drops on
    ``power_loss()`` (then mounts again: the reboot). Unmounted whether the test
    passes or fails. Skips, saying how to enable it, where LazyFS cannot run (it
    needs Linux, root, /dev/fuse, and ``NEPS_LAZYFS`` or ``NEPS_LAZYFS_BUILD``).
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
    """Cut the power of a swarm of the implementation under test, on ``neps_lazyfs``.

    ``neps_power_cut(cut_after=2.0)`` or ``neps_power_cut(point="update.committed")``
    (keywords of ``pytest_neps.powerloss.power_cut``) runs the swarm, SIGKILLs every
    worker at once, drops every unsynced byte, mounts again and checks the next boot:
    it loads, every acknowledged operation is there, the checker is clean, a fresh
    swarm continues. Returns a ``CutRun``: call ``assert_recovered()``.
    """
    from pytest_neps.powerloss import power_cut  # noqa: PLC0415 - only when used

    def cut(**kwargs: Any) -> CutRun:
        return power_cut(neps_lazyfs, **{"impl": neps_impl, **kwargs})

    return cut


@pytest.fixture
def neps_swarm(
    request: pytest.FixtureRequest, neps_run_dir: Path, neps_impl: str
) -> Callable[..., SwarmResult]:
    """Run a swarm of worker processes on ``neps_run_dir`` and return its result.

    Call it as ``neps_swarm(**config)``; keyword arguments are ``SwarmConfig``
    fields (``optimizer``, ``evaluation``, ``trials``, ``kill_rate``, ...). Defaults
    come from the ``neps_swarm`` marker, then from the ``--neps-*`` options. Then
    call ``result.assert_consistent()``.
    """
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

    def run(**overrides: Any) -> SwarmResult:
        nonlocal runs
        runs += 1
        path = neps_run_dir if runs == 1 else neps_run_dir.with_name(f"run{runs}")
        return run_swarm(SwarmConfig(**{**defaults, **overrides}), path)

    return run
