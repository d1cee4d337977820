"""neps_state: the reference shared state of a NePS run: atomic, crash-safe, race-free."""

from neps_state._errdump import ErrDump, SerializableTrialError
from neps_state._errors import (
    CorruptedFileError,
    ForeignCacheError,
    IllegalTransitionError,
    InvalidReportError,
    InvalidSampleError,
    InvalidTrialIdError,
    KeptByNePSStateError,
    LockTimeoutError,
    NePSError,
    NotARunDirectoryError,
    NotReportedYetError,
    OptimizerInfoMismatchError,
    SearchSpaceMismatchError,
    SerializedError,
    SettingsError,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    UnsafeFileError,
    UnsafePermissionsError,
    UsageError,
    WorkerIdExistsError,
)
from neps_state._io import FAULT_POINTS, set_fault_hook
from neps_state._neps import SUPPORTED_NEPS, is_patched, neps_patched, patch_neps, unpatch_neps
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
    "SUPPORTED_NEPS",
    "AskFunction",
    "BudgetInfo",
    "CorruptedFileError",
    "ErrDump",
    "ForeignCacheError",
    "IllegalTransitionError",
    "InvalidReportError",
    "InvalidSampleError",
    "InvalidTrialIdError",
    "KeptByNePSStateError",
    "LockTimeoutError",
    "NePSError",
    "NePSState",
    "NotARunDirectoryError",
    "NotReportedYetError",
    "OptimizationState",
    "OptimizerInfo",
    "OptimizerInfoMismatchError",
    "SampledConfig",
    "SearchSpaceMismatchError",
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
    "WorkerIdExistsError",
    "is_patched",
    "neps_patched",
    "patch_neps",
    "set_fault_hook",
    "unpatch_neps",
    "validate_trial_id",
]
