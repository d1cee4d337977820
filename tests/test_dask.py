"""Swarms on a Dask distributed cluster: real processes, kills, replacements."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
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
    workers: int, *, processes: bool = True, allowed_failures: int = 3
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


def _retried_swarm(tmp_path: Path, *, once: bool) -> tuple[Any, dict[str, set[int]]]:
    """A swarm with kills on a scheduler that retries (its default); each worker's pids."""
    from pytest_neps.dask import DaskLauncher  # noqa: PLC0415

    class Launcher(DaskLauncher):
        pass

    Launcher.once = once
    with local_client(3, allowed_failures=3) as client:
        launcher = Launcher(client)
        try:
            config = SwarmConfig(workers=2, trials=40, kill_rate=0.1, max_kills=3, timeout=120)
            result = run_swarm(config, tmp_path / "run", launcher=launcher)
        finally:
            launcher.close()
    pids: dict[str, set[int]] = {}
    for op in result.ops:
        pids.setdefault(op.worker, set()).add(op.pid)
    return result, pids


def test_a_retried_task_never_runs_a_worker_twice(tmp_path: Path) -> None:
    result, pids = _retried_swarm(tmp_path, once=True)
    result.assert_consistent()
    assert result.kills >= 1
    assert result.replacements == result.kills
    twice = {w: p for w, p in pids.items() if len(p) > 1}
    assert not twice, f"workers that ran in more than one process: {twice}"


def test_without_the_guard_a_retry_runs_a_worker_again(tmp_path: Path) -> None:
    # The negative control: the check above fails when retries run the loop again.
    result, pids = _retried_swarm(tmp_path, once=False)
    assert result.kills >= 1
    assert any(len(p) > 1 for p in pids.values()), pids


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


NEPS_STATE = str(Path(sys.executable).with_name("neps-state"))


def test_the_stress_command_on_a_scheduler_on_its_defaults(tmp_path: Path) -> None:
    # `dask scheduler` as a site starts it (it retries killed tasks), two `dask worker`
    # processes, over TCP; kills on. The README's main job, smaller.
    from pytest_neps.dask import tcp_cluster  # noqa: PLC0415

    with tcp_cluster(2, tmp_path) as address:
        argv = [NEPS_STATE, "stress", "--workers", "2", "--trials", "40", "--kill-rate", "0.05"]
        argv += ["--seed", "3", "--scheduler", address, "--dir", str(tmp_path / "out")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "invariant check: OK" in done.stdout
    assert re.search(r"left evaluating by kills\s+0\n", done.stdout), done.stdout
    assert not re.search(r"kills / restarts\s+0 /", done.stdout), "no kill happened"


@pytest.mark.parametrize("problem", ["unreachable", "too small"])
def test_a_scheduler_problem_is_one_line_and_exit_2(tmp_path: Path, problem: str) -> None:
    argv = [NEPS_STATE, "stress", "--workers", "3", "--trials", "10", "--dir", str(tmp_path)]
    with contextlib.ExitStack() as stack:
        if problem == "unreachable":
            address = "tcp://127.0.0.1:9"  # (the discard port: nothing listens)
        else:
            client = stack.enter_context(local_client(1))
            address = client.scheduler.address
        done = subprocess.run(
            [*argv, "--scheduler", address],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("neps-state")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert ("cannot reach" if problem == "unreachable" else "add Dask workers") in lines[0]


def test_kills_from_outside_reach_the_task_on_dask(client: Any, tmp_path: Path) -> None:
    # Only kills from outside (kill_every): the launcher must deliver them. (Dask's
    # Client.run(wait=False) refuses a plain function: such kills never happened.)
    from pytest_neps.dask import DaskLauncher  # noqa: PLC0415

    launcher = DaskLauncher(client)
    try:
        config = SwarmConfig(workers=2, trials=24, kill_every=1.0, timeout=120)
        result = run_swarm(config, tmp_path / "run", launcher=launcher)
    finally:
        launcher.close()
    result.assert_consistent()
    assert result.kills >= 1
    assert result.replacements == result.kills
