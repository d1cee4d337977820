"""The kill matrix, a swarm with kills and the doctor on tmpfs, xfs and btrfs.

Each file system is mounted for the test (tmpfs; xfs and btrfs on loop-mounted
image files), which needs root, loop devices and ``mkfs.xfs`` / ``mkfs.btrfs``
(Debian: ``apt-get install xfsprogs btrfs-progs``); where that is not possible
the test skips, saying why. The default file system of the machine is covered by
the rest of the suite. Everything mounted is unmounted, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from neps_state import Settings
from pytest_neps._killmatrix import run_matrix
from pytest_neps._swarm import SwarmConfig, run_swarm
from pytest_neps.doctor import diagnose

FILE_SYSTEMS = ("tmpfs", "xfs", "btrfs")
IMAGE_BYTES = 512 * 1024 * 1024
MATRIX_RUNS = 3


def _run(command: list[str]) -> str | None:
    """Run ``command``; its error output if it failed, else None."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


@pytest.fixture(params=FILE_SYSTEMS)
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh file system of the parameter's kind, mounted on a folder."""
    kind: str = request.param
    if os.geteuid() != 0:
        pytest.skip(f"{kind}: mounting needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(mnt)]
    else:
        mkfs = shutil.which(f"mkfs.{kind}")
        if mkfs is None:
            pytest.skip(f"{kind}: mkfs.{kind} is missing (apt-get install xfsprogs btrfs-progs)")
        image = tmp_path / f"{kind}.img"
        with image.open("wb") as f:
            f.truncate(IMAGE_BYTES)
        error = _run([mkfs, "-q", str(image)])
        if error is not None:
            pytest.skip(f"{kind}: mkfs failed: {error}")
        command = ["mount", "-o", "loop", str(image), str(mnt)]
    error = _run(command)
    if error is not None:
        pytest.skip(f"{kind}: cannot mount here ({error})")
    try:
        yield kind, mnt
    finally:
        if _run(["umount", str(mnt)]) is not None:
            _run(["umount", "-l", str(mnt)])


@pytest.mark.timeout(3600)
def test_kill_matrix_swarm_and_doctor(
    mounted: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    kind, mnt = mounted
    doctor = diagnose(mnt)
    runs = run_matrix(MATRIX_RUNS, settings=Settings(durability="fsync"), directory=mnt)
    recovered = sum(r.ok for r in runs)
    swarm = run_swarm(
        SwarmConfig(workers=4, trials=300, kill_rate=0.02, observers=1, timeout=600),
        mnt / "swarm",
    )
    with capsys.disabled():
        print(
            f"\n{kind:<6} doctor {'safe' if doctor.safe else 'UNSAFE'}; kill matrix: recovered"
            f" {recovered} of {len(runs)}; swarm: {swarm.kills} kills,"
            f" {swarm.cycles_per_s:.0f} cycles/s, {len(swarm.violations)} violations"
        )
    assert doctor.safe, doctor.render()
    assert recovered == len(runs), "\n".join(str(r.problems) for r in runs if not r.ok)
    swarm.assert_consistent()
