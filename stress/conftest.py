"""The stress suite: long runs, opt-in (``pytest stress`` or ``tox -e stress``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a stress test."""
    for item in items:
        item.add_marker(pytest.mark.stress)
