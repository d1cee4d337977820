"""A swarm on a real Dask cluster: a scheduler and 4 ``dask worker`` processes over TCP.

Started here as subprocesses on 127.0.0.1 (as a cluster's would be on its nodes),
500 trials with kills, beside the same swarm on local processes in the same run.
Everything started is stopped afterwards, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_neps._swarm import SwarmConfig, run_swarm

pytest.importorskip("distributed", reason="Dask is not installed: pip install 'neps-state[dask]'")

DASK = str(Path(sys.executable).with_name("dask"))
WORKERS = 4


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[str]:
    """The scheduler's address; a scheduler and 4 workers run until the test ends."""
    file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
             ":0", "--scheduler-file", str(file)],
            env=env, start_new_session=True, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        procs += [
            subprocess.Popen(
                [DASK, "worker", "--nthreads", "1", "--nworkers", "1", "--scheduler-file",
                 str(file), "--dashboard-address", ":0"],
                start_new_session=True, stderr=subprocess.DEVNULL,
            )
            for _ in range(WORKERS)
        ]  # fmt: skip
        import json  # noqa: PLC0415

        yield str(json.loads(file.read_text())["address"])
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(30)


@pytest.mark.timeout(1800)
def test_a_swarm_on_a_dask_cluster_beside_local_processes(
    scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_neps.dask import DaskLauncher, connect  # noqa: PLC0415

    config = SwarmConfig(workers=WORKERS, trials=500, kill_rate=0.01, kill_every=5.0, timeout=900)
    with connect(scheduler) as launcher:
        assert isinstance(launcher, DaskLauncher)
        launcher.client.wait_for_workers(WORKERS, timeout=60)
        on_dask = run_swarm(config, tmp_path / "dask", launcher=launcher)
    local = run_swarm(config, tmp_path / "local")
    with capsys.disabled():
        for name, r in (("dask", on_dask), ("local", local)):
            print(
                f"\n{name:<6} trials {len(r.trials)}  kills {r.kills}  replacements"
                f" {r.replacements}  {r.cycles_per_s:.1f} cycles/s  violations {len(r.violations)}"
            )
    on_dask.assert_consistent()
    local.assert_consistent()
    assert on_dask.kills > 0
