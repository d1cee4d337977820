"""Every optimizer NePS 0.17 predefines, in swarms of NePS's own worker loop on this state.

``runtime="neps"``: each worker process runs NePS's ``DefaultWorker`` (as ``neps.run``
does) on the reference, patched in; 4 workers, kills. Needs the ``neps`` extra
(``tox -e neps``); skips without it. An optimizer NePS itself cannot build here is
skipped with NePS's reason (``ifbo`` downloads its model, and this machine has no
network). Each swarm must meet its budget with no violation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neps_state import Settings
from pytest_neps._swarm import run_swarm

algorithms = pytest.importorskip(
    "neps.optimizers.algorithms",
    reason="upstream NePS is not installed: pip install 'neps-state[neps]'",
)

OPTIMIZERS = sorted(algorithms.PredefinedOptimizers)
MULTI_OBJECTIVE = {"mo_hyperband", "moasha", "primo"}
TRIALS = 40
PRIMO_IDS = (
    "NePS's primo takes its next trial id from reported trials at the highest fidelity only"
    " (neps/optimizers/primo.py, nxt_id), so with several workers it proposes the id of a"
    " trial another worker is still evaluating; NePS's runtime then raises RuntimeError"
)


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(reason=PRIMO_IDS, strict=True)] if name == "primo" else []


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in OPTIMIZERS])
def test_every_predefined_optimizer_in_nepss_worker_loop(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_neps.upstream import neps_optimizer  # noqa: PLC0415 - needs NePS

    try:
        neps_optimizer(name).build()
    except Exception as e:  # noqa: BLE001 - NePS's own reason, whatever it is
        pytest.skip(f"NePS cannot build {name} here: {type(e).__name__}: {str(e)[:200]}")
    evaluation = "two_objectives" if name in MULTI_OBJECTIVE else "flaky"
    result = run_swarm(
        run_dir=tmp_path / "run",
        workers=4,
        trials=TRIALS,
        runtime="neps",
        optimizer=f"neps:{name}",
        evaluation=f"pytest_neps._evaluate:{evaluation}",
        kill_rate=0.03,
        seed=11,
        timeout=3600,
        # A sample holds the optimizer lock while the optimizer thinks (a GP fit).
        settings=Settings(durability="os", lock_timeout=None),
    )
    s = result.summary()
    with capsys.disabled():
        print(
            f"\n{name:<28} trials {s['trials']:>3}  kills {s['kills']:>2}"
            f"  stranded {len(s['stranded']):>2}  {s['wall_s']:6.1f} s"
            f"  violations {len(s['violations'])}"
        )
    result.assert_consistent()
    assert s["kills"] > 0
