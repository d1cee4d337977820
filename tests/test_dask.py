"""Swarms on a Dask distributed cluster: real processes, kills, replacements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_neps._swarm import SwarmConfig, run_swarm

distributed = pytest.importorskip(
    "distributed", reason="Dask is not installed: pip install 'neps-state[dask]'"
)
dask = pytest.importorskip("dask")

# Each test has a cluster of its own: a kill in one test never reaches another's tasks.
# Dask's scheduler leaves sockets to the garbage collector when a cluster closes.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@contextlib.contextmanager
def local_client(
    workers: int, *, processes: bool = True, allowed_failures: int = 0
) -> Iterator[Any]:
    """A client of a LocalCluster of its own with one thread per worker."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}),
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def client() -> Iterator[Any]:
    with local_client(4) as client:
        yield client


def test_a_swarm_with_kills_on_dask(client: Any, tmp_path: Path) -> None:
    from pytest_neps.dask import DaskLauncher  # noqa: PLC0415

    launcher = DaskLauncher(client)
    try:
        config = SwarmConfig(
            workers=3,
            trials=60,
            kill_rate=0.08,
            kill_points=("store.committed", "update.files_written"),
            observers=1,
            timeout=120,
        )
        result = run_swarm(config, tmp_path / "run", launcher=launcher)
    finally:
        launcher.close()
    result.assert_consistent()
    assert result.kills > 0
    assert {k.point for w in result.workers for k in w.kills} - {"after-op"}  # at fault points
    assert result.replacements == result.kills
    assert not launcher.running()
    client.wait_for_workers(4, timeout=60)  # every killed Dask worker's nanny restarts it


def test_a_scheduler_that_retries_killed_tasks_is_refused(tmp_path: Path) -> None:
    from pytest_neps.dask import DaskLauncher  # noqa: PLC0415

    with (
        local_client(1, processes=False, allowed_failures=3) as client,
        pytest.raises(ValueError, match="ALLOWED_FAILURES=0"),
    ):
        DaskLauncher(client)


def test_the_fixture_takes_a_launcher(client: Any, neps_swarm: Any) -> None:
    from pytest_neps.dask import DaskLauncher  # noqa: PLC0415

    launcher = DaskLauncher(client)
    try:
        result = neps_swarm(launcher=launcher, workers=2, trials=20)
    finally:
        launcher.close()
    result.assert_consistent()
    assert set(launcher.futures) == {w.worker_id for w in result.workers}


def test_the_scheduler_option(pytester: pytest.Pytester) -> None:
    # Routing only (kills on Dask are the first test's): a cluster of its own, no kills.
    pytester.makepyfile(
        """
        def test_swarm(neps_swarm):
            neps_swarm(workers=2, trials=20).assert_consistent()
        """
    )
    with local_client(2) as client:
        address = client.scheduler.address
        args = ("-p", "no:cacheprovider", f"--neps-scheduler={address}")
        result = pytester.runpytest_subprocess(*args)
        result.assert_outcomes(passed=1)
        ran = {v for v in client.run_on_scheduler(_variables) if "-w" in v}
    assert len(ran) >= 2, ran  # the swarm's workers told the scheduler where they ran


def _variables(dask_scheduler: Any) -> list[str]:
    return [v for v in dask_scheduler.extensions["variables"].variables if "neps-swarm" in v]
