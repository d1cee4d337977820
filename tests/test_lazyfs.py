"""Power cuts on LazyFS: a few here, the full matrix in stress/ (``neps-state powerloss``).

Each needs LazyFS (Linux, root, /dev/fuse, NEPS_LAZYFS); elsewhere they skip with
one line saying how to enable them. ``.ci/run`` builds LazyFS, so CI runs them.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_neps.controls import SkipsJournalFsync, TrustsDerivedFiles
from pytest_neps.lazyfs import BUILD_ENV, LAZYFS_ENV, LazyFS, unavailable
from pytest_neps.powerloss import CutRun, power_cut

POINT = "update.committed"


def test_lazyfs_loses_what_was_not_fsynced(neps_lazyfs: LazyFS) -> None:
    mnt = neps_lazyfs.mountpoint
    fd = os.open(mnt / "synced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"kept")
    os.fsync(fd)
    os.write(fd, b" and lost")
    os.close(fd)
    (mnt / "unsynced").write_bytes(b"lost")
    neps_lazyfs.power_loss()
    assert (mnt / "synced").read_bytes() == b"kept"
    assert (mnt / "unsynced").read_bytes() == b""  # the name survives, the data does not
    assert neps_lazyfs.mounts == 2


def test_a_power_cut_at_a_random_instant_is_recovered(
    neps_power_cut: Callable[..., CutRun],
) -> None:
    run = neps_power_cut(cut_after=2.5, seed=1)
    run.assert_recovered()
    assert run.acked > 20


@pytest.mark.parametrize("point", ["store.dir_renamed", "update.files_written"])
def test_a_power_cut_at_a_fault_point_is_recovered(
    neps_power_cut: Callable[..., CutRun], point: str
) -> None:
    run = neps_power_cut(point=point, point_after_ops=6, seed=2)
    run.assert_recovered()
    assert run.kind == point


def test_a_state_that_skips_the_journal_fsync_loses_acknowledged_operations(
    neps_lazyfs: LazyFS,
) -> None:
    # Cut when a worker is inside its 9th operation: acknowledged ones are certain.
    run = power_cut(neps_lazyfs, impl=SkipsJournalFsync, point=POINT, point_after_ops=8, seed=3)
    assert run.loaded
    assert run.lost, run.describe()


def test_a_state_that_trusts_derived_files_leaves_them_broken(neps_lazyfs: LazyFS) -> None:
    run = power_cut(neps_lazyfs, impl=TrustsDerivedFiles, point=POINT, point_after_ops=8, seed=5)
    assert any("[files parse]" in v for v in run.violations), run.describe()


def test_without_lazyfs_the_tests_skip_saying_how_to_enable_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LAZYFS_ENV, raising=False)
    monkeypatch.delenv(BUILD_ENV, raising=False)
    pytester.makepyfile(
        textwrap.dedent(
            """
            def test_power(neps_lazyfs):
                raise AssertionError("must not run")
            """
        )
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*LazyFS*set {LAZYFS_ENV}=/path/to/lazyfs*"])


def test_the_mount_is_gone_after_the_fixture(pytester: pytest.Pytester, tmp_path: Path) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"LazyFS: {reason}")
    marker = tmp_path / "mountpoint.txt"
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def test_fails(neps_lazyfs):
                Path({str(marker)!r}).write_text(str(neps_lazyfs.mountpoint))
                assert neps_lazyfs.mounted
                raise AssertionError("the test fails; the mount must still go")
            """
        )
    )
    pytester.runpytest().assert_outcomes(failed=1)
    mountpoint = marker.read_text()
    with open("/proc/mounts") as f:
        assert all(line.split()[1] != mountpoint for line in f)
