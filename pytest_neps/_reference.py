"""The implementation the harness tests when none is named (spelled once, here)."""

REFERENCE = "neps_state:NePSState"
"""The reference state, as ``module:attribute``."""
