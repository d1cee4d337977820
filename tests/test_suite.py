"""The conformance suite of pytest_neps, run against the reference implementation."""

from pytest_neps.suite import *  # noqa: F403
