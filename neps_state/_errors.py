"""The error hierarchy: one root, leaves that also subclass a fitting builtin.

Every error keeps its data as attributes and pickles across processes (each
class defines ``__reduce__`` with its own constructor arguments), so a worker's
exception can be shipped back to the process that started it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NePSError(Exception):
    """Root of every error raised by ``neps_state``."""


class SettingsError(NePSError, ValueError):
    """An environment variable or setting has an invalid value."""


class UsageError(NePSError, ValueError):
    """A call that cannot be acted on as given: missing or contradictory arguments."""


class InvalidSampleError(NePSError, ValueError):
    """The optimizer returned something that is not a valid sample."""


class InvalidReportError(UsageError):
    """A report's field has a value a trial cannot store (``set_complete``)."""

    def __init__(self, trial_id: str, field: str, value: object, problem: str) -> None:
        super().__init__(trial_id, field, value, problem)
        self.trial_id = trial_id
        self.field = field
        self.value = value
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.trial_id, self.field, self.value, self.problem))

    def __str__(self) -> str:
        return (
            f"Trial {self.trial_id!r}: {self.field}={self.value!r} cannot be reported:"
            f" {self.problem}."
        )


class NotReportedYetError(NePSError):
    """A trial's report was asked for before the trial was reported."""


class WorkerIdExistsError(NePSError, ValueError):
    """A worker asked for an id that another worker of the run already has."""

    def __init__(self, worker_id: str, taken: list[str]) -> None:
        super().__init__(worker_id, taken)
        self.worker_id = worker_id
        self.taken = taken

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.worker_id, self.taken))

    def __str__(self) -> str:
        return (
            f"Worker id {self.worker_id!r} already exists in this run (taken: {self.taken});"
            " give each worker its own id, or none to be given one"
        )


class SearchSpaceMismatchError(NePSError):
    """The pipeline space given to ``create_or_load`` differs from the one on disk."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))

    def __str__(self) -> str:
        return (
            f"The pipeline space on disk does not match the one provided: the one saved at"
            f" {self.path} {self.problem}. To continue this run, omit the pipeline space"
            " (it is loaded from disk) or pass the same one; to start a new run with"
            " another space, use another root directory."
        )


class KeptByNePSStateError(NePSError):
    """NePS's own state (not patched) read a run directory that neps_state keeps."""

    def __str__(self) -> str:
        return (
            "This run directory is kept by neps_state (its record of the trials is"
            " configs/.trial_cache.journal), and NePS's own state would misread it, so"
            " nothing was read or written. Call neps_state.patch_neps() at the top of the"
            " script every worker runs (then NePS uses neps_state), or give this run"
            " another root_directory."
        )


class SerializedError(NePSError):
    """An error from another worker, rebuilt from its stored text."""


class ForeignCacheError(NePSError):
    """The cache file exists but is not one of our journals (e.g. NePS's own cache)."""


class TrialNotFoundError(NePSError, KeyError):
    """No trial with this id exists in the run directory."""

    def __init__(self, trial_id: str, path: str | Path | None = None) -> None:
        super().__init__(trial_id, path)
        self.trial_id = trial_id
        self.path = None if path is None else Path(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.trial_id, self.path))

    def __str__(self) -> str:
        where = "" if self.path is None else f" (expected at {self.path})"
        return f"Trial {self.trial_id!r} not found{where}."


class TrialAlreadyExistsError(NePSError, FileExistsError):
    """A new trial was given an id that already exists."""

    def __init__(self, trial_id: str, path: str | Path) -> None:
        super().__init__(trial_id, str(path))
        self.trial_id = trial_id
        self.path = Path(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.trial_id, self.path))

    def __str__(self) -> str:
        return f"Trial {self.trial_id!r} already exists at {self.path}."


class InvalidTrialIdError(NePSError, ValueError):
    """A trial id is not a safe, single path component."""

    def __init__(self, trial_id: object, problem: str) -> None:
        super().__init__(trial_id, problem)
        self.trial_id = trial_id
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.trial_id, self.problem))

    def __str__(self) -> str:
        return f"Invalid trial id {self.trial_id!r}: {self.problem}."


class IllegalTransitionError(NePSError, ValueError):
    """A trial update would move the trial's state along a forbidden edge."""

    def __init__(self, trial_id: str, current: str, requested: str, reason: str) -> None:
        super().__init__(trial_id, current, requested, reason)
        self.trial_id = trial_id
        self.current = current
        self.requested = requested
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.trial_id, self.current, self.requested, self.reason))

    def __str__(self) -> str:
        return (
            f"Trial {self.trial_id!r} cannot go from {self.current!r} to"
            f" {self.requested!r}: {self.reason}."
        )


class CorruptedFileError(NePSError, ValueError):
    """A file of the run directory is missing, truncated or does not parse."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class UnsafeFileError(CorruptedFileError):
    """A pickle in the run directory asks for code that is not on the allowlist.

    Nothing of it ran: the unpickler refused ``refused`` (``module.name``) before
    importing or calling anything. ``Settings(pickle_allow=...)`` or
    ``NEPS_STATE_PICKLE_ALLOW`` extends the allowlist for a directory you trust.
    """

    def __init__(self, path: str | Path, refused: str) -> None:
        super().__init__(
            path,
            f"refused to unpickle {refused}: not on the allowlist (a pickle can run any"
            " code; if you trust this file, add it with NEPS_STATE_PICKLE_ALLOW)",
        )
        self.refused = refused

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.refused))


class NotARunDirectoryError(NePSError, FileNotFoundError):
    """A path that should hold a NePS run directory does not."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))

    def __str__(self) -> str:
        return f"{self.path} is not a NePS run directory: {self.problem}"


class OptimizerInfoMismatchError(NePSError):
    """The optimizer info given to ``create_or_load`` differs from the one on disk."""

    def __init__(self, path: str | Path, on_disk: object, provided: object) -> None:
        super().__init__(str(path), on_disk, provided)
        self.path = Path(path)
        self.on_disk = on_disk
        self.provided = provided

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.on_disk, self.provided))

    def __str__(self) -> str:
        return (
            f"The optimizer info in {self.path} does not match the one provided."
            f"\n  on disk:  {self.on_disk}\n  provided: {self.provided}"
        )


class LockTimeoutError(NePSError, TimeoutError):
    """A file lock could not be acquired within its timeout."""

    def __init__(self, path: str | Path, timeout: float, env_var: str) -> None:
        super().__init__(str(path), timeout, env_var)
        self.path = Path(path)
        self.timeout = timeout
        self.env_var = env_var

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.timeout, self.env_var))

    def __str__(self) -> str:
        return (
            f"Could not acquire the lock {self.path} within {self.timeout:g} s."
            " Another process holds it for longer than that (a process that died"
            " releases its locks at once). To wait longer, set the environment"
            f" variable {self.env_var} (seconds, or 'none' to wait forever) or pass"
            " Settings(lock_timeout=...)."
        )


class UnsafePermissionsError(NePSError, PermissionError):
    """The run directory can be changed by other users, and strict permissions were asked."""

    def __init__(self, risks: list[str]) -> None:
        super().__init__(risks)
        self.risks = risks

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.risks,))

    def __str__(self) -> str:
        return (
            "Other users can change this run directory: "
            + "; ".join(self.risks)
            + " (refused because NEPS_STATE_STRICT_PERMISSIONS or"
            " Settings(strict_permissions=True) asks it)"
        )
