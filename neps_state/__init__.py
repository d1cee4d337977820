"""neps_state: the reference shared state of a NePS run: atomic, crash-safe, race-free."""

from neps_state._errdump import ErrDump, SerializableTrialError
from neps_state._errors import (
    CorruptedFileError,
    ForeignCacheError,
    IllegalTransitionError,
    InvalidReportError,
    InvalidSampleError,
    InvalidTrialIdError,
    LockTimeoutError,
    NePSError,
    NotARunDirectoryError,
    OptimizerInfoMismatchError,
    SerializedError,
    SettingsError,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    UnsafeFileError,
    UnsafePermissionsError,
    UsageError,
)
from neps_state._io import FAULT_POINTS, set_fault_hook
from neps_state._optimizer import (
    AskFunction,
    BudgetInfo,
    OptimizationState,
    OptimizerInfo,
    SampledConfig,
    SeedSnapshot,
)
from neps_state._repo import TrialRepo
from neps_state._settings import Settings
from neps_state._state import NePSState
from neps_state._trial import Trial, validate_trial_id
from neps_state._trialfiles import TrialWriteHint

__all__ = [
    "FAULT_POINTS",
    "AskFunction",
    "BudgetInfo",
    "CorruptedFileError",
    "ErrDump",
    "ForeignCacheError",
    "IllegalTransitionError",
    "InvalidReportError",
    "InvalidSampleError",
    "InvalidTrialIdError",
    "LockTimeoutError",
    "NePSError",
    "NePSState",
    "NotARunDirectoryError",
    "OptimizationState",
    "OptimizerInfo",
    "OptimizerInfoMismatchError",
    "SampledConfig",
    "SeedSnapshot",
    "SerializableTrialError",
    "SerializedError",
    "Settings",
    "SettingsError",
    "Trial",
    "TrialAlreadyExistsError",
    "TrialNotFoundError",
    "TrialRepo",
    "TrialWriteHint",
    "UnsafeFileError",
    "UnsafePermissionsError",
    "UsageError",
    "set_fault_hook",
    "validate_trial_id",
]
