"""Fixtures of the project's own tests (the shared helpers are in ``neps_test_helpers``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from neps_test_helpers import make_state

from neps_state import NePSState


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def state(run_dir: Path) -> NePSState:
    return make_state(run_dir)


@pytest.fixture
def state_factory(run_dir: Path) -> Callable[..., NePSState]:
    def factory(**kwargs: object) -> NePSState:
        return make_state(run_dir, **kwargs)  # type: ignore[arg-type]

    return factory
