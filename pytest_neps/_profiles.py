"""Hypothesis budgets of the harness: the ``neps-*`` profiles and the suite's settings.

Importing Hypothesis costs ~0.15 s, so the plugin registers the profiles only
when a run asks for one (``--hypothesis-profile=neps-...``) or when the suite is
imported; a conftest that loads one itself calls :func:`register_profiles` first.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

SLOW_OK = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture)
"""Health checks a property that starts processes cannot meet."""

BUDGETS = {"neps-dev": 10, "neps-ci": 25, "neps-stress": 400}
"""Examples per property of each profile."""


def register_profiles() -> None:
    """Register ``neps-dev``, ``neps-ci`` and ``neps-stress`` (idempotent)."""
    for name, examples in BUDGETS.items():
        settings.register_profile(
            name,
            max_examples=examples,
            deadline=None,
            suppress_health_check=SLOW_OK,
            print_blob=name != "neps-dev",
        )


def suite_settings() -> settings:
    """The settings of the suite's properties under the active profile.

    Whatever the profile, no deadline (an example starts processes and may take
    seconds) and no health check about slowness; the profile's budget, except
    under Hypothesis's own ``default`` profile (100 examples), where the suite
    takes the ``neps-ci`` budget, so plain ``pytest`` runs it in CI time.
    """
    register_profiles()
    current = settings()
    examples = current.max_examples
    if settings.get_current_profile_name() == "default":
        examples = BUDGETS["neps-ci"]
    suppressed = tuple({*current.suppress_health_check, *SLOW_OK})
    return settings(current, deadline=None, suppress_health_check=suppressed, max_examples=examples)
