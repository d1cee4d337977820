"""A swarm on a real Dask cluster: a scheduler and 4 ``dask worker`` processes over TCP.

Started here as subprocesses on 127.0.0.1 (as a cluster's would be on its nodes),
the scheduler on its defaults (it retries a task whose worker died), 500 trials
with kills, beside the same swarm on local processes in the same run. Everything
started is stopped afterwards, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_neps._swarm import SwarmConfig, run_swarm

pytest.importorskip("distributed", reason="Dask is not installed: pip install 'neps-state[dask]'")

WORKERS = 4


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[str]:
    """A scheduler on its defaults (it retries killed tasks) and 4 workers, over TCP."""
    from pytest_neps.dask import tcp_cluster  # noqa: PLC0415

    with tcp_cluster(WORKERS, tmp_path) as address:
        yield address


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
