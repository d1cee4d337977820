"""The conformance suite under the stress profile (``--hypothesis-profile=neps-stress``)."""

from pytest_neps.suite import *  # noqa: F403
