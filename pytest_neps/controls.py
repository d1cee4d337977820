"""Deliberately broken states: the negative controls of the test suite.

Each class is the reference ``NePSState`` with one known defect of the seed
design put back. A test harness that cannot catch these cannot catch anything;
the project's tests assert that each one is caught. Never use them for real runs.
:data:`BY_DEFECT` names the control of each known defect (D1-D11, see
``pytest_neps.defects``).
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neps_state import (
    CorruptedFileError,
    NePSState,
    OptimizationState,
    OptimizerInfo,
    OptimizerInfoMismatchError,
    Settings,
    TrialRepo,
    _errdump,
    _repo,
    _state,
    _trial,
    _trialfiles,
)
from neps_state._index import TrialIndex
from neps_state._io import dump_yaml
from neps_state._journal import HEADER_SIZE, Journal, ReadResult, parse_frames
from neps_state._records import Record, decode, encode
from neps_state._state import OPTIMIZER_INFO_FILE


def write_in_place(path: Path, data: bytes) -> None:
    """The non-atomic write of the seed: truncate, then write in two steps."""
    with open(path, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        f.write(data[half:])


class _NoLock:
    held = True

    @contextmanager
    def lock(self, *, worker_id: str | None = None) -> Iterator[None]:
        del worker_id
        yield


class UnlockedSampling(NePSState):
    """Samples without the optimizer and trial locks: two workers can take one id."""

    def lock_and_sample_trial(
        self, optimizer: Any, *, worker_id: str, n: int | None = None, claim: bool = False
    ) -> Any:
        """Sample with both locks replaced by no-ops."""
        saved = self._optimizer_lock, self._trial_lock
        self._optimizer_lock = self._trial_lock = _NoLock()  # type: ignore[assignment]
        try:
            return super().lock_and_sample_trial(optimizer, worker_id=worker_id, n=n, claim=claim)
        finally:
            self._optimizer_lock, self._trial_lock = saved


class RuntimeReportsLoseErrors(NePSState):
    """NePS's runtime's report step (``_report_trial_evaluation``) records no error."""

    def _report_trial_evaluation(self, trial: Any, report: Any, *, worker_id: str) -> None:
        """Commit the report, without its error record."""
        trial.report = report
        new, _ = self._reported(trial, report, worker_id)
        with self._trials():
            self._commit_report(new, None, worker_id, None)


class _InPlaceRepo(TrialRepo):
    def _write_files(
        self, path: Path, files: dict[str, bytes | None], temps: dict[str, Path] | None = None
    ) -> None:
        del temps  # the files prepared ahead are left unused (and removed by the caller)
        for name, data in files.items():
            if data is None:
                (path / name).unlink(missing_ok=True)
            else:
                write_in_place(path / name, data)


class InPlaceWrites(NePSState):
    """Rewrites the optimizer state and trial files in place: readers see partial files."""

    repo_class = _InPlaceRepo

    def _write_optimizer_state(self, data: bytes, *, fsync: bool) -> None:
        del fsync
        write_in_place(self._optimizer_state_path, data)


class UnlockedCreate(NePSState):
    """Checks and writes the optimizer info without a lock, in place (the seed's race)."""

    @classmethod
    def create_or_load(
        cls,
        path: Path | str,
        *,
        load_only: bool = False,
        optimizer_info: OptimizerInfo | Mapping[str, Any] | None = None,
        optimizer_state: OptimizationState | None = None,
        pipeline_space: Any = None,
        settings: Settings | None = None,
    ) -> NePSState:
        """Create or load the way the seed does: exists-check, then read or write."""
        del pipeline_space  # (never given by the harness)
        root = Path(path).absolute()
        is_new = not root.exists()
        (root / "configs").mkdir(parents=True, exist_ok=True)
        state = cls(root, Settings.from_env() if settings is None else settings)
        if not is_new:
            on_disk = state._read_optimizer_info()
            if not load_only and on_disk != optimizer_info:
                raise OptimizerInfoMismatchError(root, on_disk, optimizer_info)
            state._read_optimizer_state()
        elif optimizer_info is not None and optimizer_state is not None:
            info = dump_yaml(OptimizerInfo.of(optimizer_info).to_dict(), root / OPTIMIZER_INFO_FILE)
            write_in_place(root / OPTIMIZER_INFO_FILE, info)
            write_in_place(state._optimizer_state_path, pickle.dumps(optimizer_state))
        with state._trial_lock.lock():
            state._repo.sync()
        return state


class _StaleRepo(TrialRepo):
    def _absorb(self, result: ReadResult) -> None:
        if self._index and not result.reset:
            return  # the records other processes appended are read past, not applied
        super()._absorb(result)


class StaleCacheRead(NePSState):
    """Once it has trials, ignores the cache records that other processes append."""

    repo_class = _StaleRepo


class _LossyRepo(TrialRepo):
    def consolidate(self) -> None:
        self.sync()
        payloads, _ = parse_frames(self.cache_path.read_bytes(), HEADER_SIZE)
        index = TrialIndex()
        for payload in payloads[:-1]:
            for trial in decode(payload, self.cache_path).trials:
                index.put(trial)
        self._journal.rewrite([encode(Record(list(index.values())))])


class LossyConsolidation(NePSState):
    """Consolidates the cache without its last record: the newest update is lost."""

    repo_class = _LossyRepo


class _StaleConsolidationRepo(TrialRepo):
    _consolidating = False

    def sync(self) -> None:
        if not self._consolidating:
            super().sync()

    def consolidate(self) -> None:
        self._consolidating = True  # the snapshot is this handle's view, however old
        try:
            super().consolidate()
        finally:
            self._consolidating = False


class StaleConsolidation(NePSState):
    """Consolidates from the handle's own view without reading the newest commits first.

    Handle A reads one trial, handle B samples three more, A consolidates: a fresh
    handle then sees one trial of four (the others' commits are dropped).
    """

    repo_class = _StaleConsolidationRepo


class EqualBatchTimes(NePSState):
    """Gives every trial of a sampled batch the same time: the proposal order is lost.

    "Earliest sampled" then ties, and the ids' order decides which trial is next.
    """

    def _new_trials(self, sampled: object, n: int | None, worker_id: str) -> list[_trial.Trial]:
        trials = super()._new_trials(sampled, n, worker_id)
        for trial in trials:
            trial.metadata.time_sampled = trials[0].metadata.time_sampled
        return trials


class SplitClaim(NePSState):
    """Claims in two critical sections: take the earliest pending trial, then mark it.

    Another worker can take the same trial between the two, and both evaluate it.
    """

    def lock_and_claim_next_pending_trial(self, worker_id: str) -> _trial.Trial | None:
        """Take the earliest pending trial (one lock), then mark it evaluating (another)."""
        trial = self.lock_and_get_next_pending_trial()
        if trial is None:
            return None
        trial.set_evaluating(time_started=time.time(), worker_id=worker_id)
        self.put_updated_trial(trial, hints="metadata")
        return trial


class TakesBackFromTheLiving(NePSState):
    """Takes back every trial other workers evaluate, as if each of them had died.

    A live worker's trial goes to another: two workers evaluate it, and the first
    one's report is refused (the trial is no longer its to report).
    """

    def _any_dead(self) -> bool:
        return bool(self._repo.view.count(_trial.State.EVALUATING))

    def lock_and_claim_next_pending_trial(self, worker_id: str) -> _trial.Trial | None:
        """Reset every evaluating trial, then claim as the reference does."""
        with self._trials():
            self._repo.sync()
            view = self._repo.view
            for tid in view.ids_in(_trial.State.EVALUATING):
                trial = view[tid].clone()
                trial.reset()
                self._repo.update_trial(trial, hints="metadata")
        return super().lock_and_claim_next_pending_trial(worker_id)


class _AmnesicRepo(TrialRepo):
    def _rebuild(self, reason: str, *, keep_old: bool = False) -> None:
        super()._rebuild(reason, keep_old=keep_old)
        self._index.clear()
        self._journal.close()


class EmptyAfterCacheLoss(NePSState):
    """After the cache file is lost, the first read returns no trials (the seed's bug)."""

    repo_class = _AmnesicRepo


class _ForgetfulRepo(TrialRepo):
    def sync(self) -> None:
        self._refresh(recovering=False)


class NoCrashRecovery(NePSState):
    """Ignores the in-flight marker: what a writer killed mid-operation left stays half-done."""

    repo_class = _ForgetfulRepo


class _UnsyncedJournal(Journal):
    def flush(self) -> None:
        self.unsynced = False  # acknowledged without the fsync


class _NoFsyncRepo(TrialRepo):
    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self._journal = _UnsyncedJournal(self.cache_path, fsync=self.settings.fsync)


class SkipsJournalFsync(NePSState):
    """Acknowledges commits without fsyncing the journal: a power loss takes them."""

    repo_class = _NoFsyncRepo


class TrustsDerivedFiles(NePSState):
    """Never checks the files derived from the journal after a reboot.

    A power loss then leaves empty trial files and an empty optimizer state behind.
    """

    def _ensure_checked(self) -> None:
        return


class _TornTailRepo(TrialRepo):
    def _absorb(self, result: ReadResult) -> None:
        if result.bad_tail:
            raise pickle.UnpicklingError("pickle data was truncated")
        super()._absorb(result)


class TornTailBreaksReaders(NePSState):
    """A cache that ends in a cut-short record fails every later read (D4)."""

    repo_class = _TornTailRepo


def _unchecked(trial_id: object) -> str:
    return str(trial_id)


class UncheckedIds(NePSState):
    """Uses sampled trial ids as path parts without checking them (D5)."""

    def lock_and_sample_trial(
        self, optimizer: Any, *, worker_id: str, n: int | None = None, claim: bool = False
    ) -> Any:
        """Sample with the trial-id check switched off."""
        modules = (_state, _trialfiles, _repo, _trial)
        saved = [getattr(m, "validate_trial_id") for m in modules]  # noqa: B009
        for m in modules:
            setattr(m, "validate_trial_id", _unchecked)  # noqa: B010
        try:
            return super().lock_and_sample_trial(optimizer, worker_id=worker_id, n=n, claim=claim)
        finally:
            for m, f in zip(modules, saved, strict=True):
                setattr(m, "validate_trial_id", f)  # noqa: B010


def _raw(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except CorruptedFileError as e:
            raise ValueError(e.problem) from None

    return call


class RawParseErrors(NePSState):
    """Lets a damaged file surface as a raw error that does not name it (D6)."""

    lock_and_read_trials = _raw(NePSState.lock_and_read_trials)
    lock_and_get_trial_by_id = _raw(NePSState.lock_and_get_trial_by_id)
    unsafe_retry_get_trial_by_id = _raw(NePSState.unsafe_retry_get_trial_by_id)

    @classmethod
    def create_or_load(cls, path: Path | str, **kwargs: Any) -> NePSState:
        """Create or load; a damaged file is a raw ``ValueError``."""
        state: NePSState = _raw(super().create_or_load)(path, **kwargs)
        return state


class TwoStepClaim(NePSState):
    """Has no atomic claim: taking a pending trial and marking it evaluating are two steps (D7).

    The harness then takes trials the seed's way (get the next pending one, put it
    evaluating), and two workers can take the same trial.
    """

    lock_and_claim_next_pending_trial = None  # type: ignore[assignment]

    def lock_and_sample_trial(  # type: ignore[override]
        self, optimizer: Any, *, worker_id: str, n: int | None = None
    ) -> Any:
        """Sample (never already claimed: the seed's signature)."""
        return super().lock_and_sample_trial(optimizer, worker_id=worker_id, n=n)


class _RereadingRepo(TrialRepo):
    def _refresh(self, *, recovering: bool) -> None:
        self._journal.close()  # every operation reads the whole cache again
        super()._refresh(recovering=recovering)


class RereadsEverything(NePSState):
    """Reads the whole cache in every operation: a cycle's cost grows with the run (D8)."""

    repo_class = _RereadingRepo


class _FolderAfterCommitRepo(_ForgetfulRepo):
    def _place(self, staging: Path, path: Path) -> None:
        self._journal.append(self._pending_payload)
        super()._place(staging, path)

    def store_new_trial(self, trial: Any, *, optimizer_state: bytes | None = None) -> None:
        batch = [trial] if not isinstance(trial, list) else trial
        self._pending_payload = encode(Record(list(batch), optimizer_state=optimizer_state))
        super().store_new_trial(trial, optimizer_state=optimizer_state)


class CacheBeforeFolder(NePSState):
    """Commits a new trial to the cache before its folder exists, recovering nothing (D9)."""

    repo_class = _FolderAfterCommitRepo


class UnlockedWorkerIds(NePSState):
    """Gives out worker ids from a state read before the locks: two workers get one id."""

    def lock_and_set_new_worker_id(self, worker_id: str | None = None) -> str:
        """Read the ids, pause, then commit (the read-modify-write race)."""
        self._sync_view()
        taken = list(self._read_optimizer_state().worker_ids or [])
        time.sleep(0.02)
        wid = f"worker_{len(taken)}" if worker_id is None else worker_id
        with self._optimizer_lock.lock(), self._trials():
            self._repo.sync()
            opt_state = self._read_optimizer_state()
            opt_state.worker_ids = [*taken, wid]
            self._commit_state(opt_state)
        return wid


class _EmptiesErrorsRepo(TrialRepo):
    def clean_trial(self, trial_id: str, *, remove: bool) -> None:
        super().clean_trial(trial_id, remove=remove)
        if self.errors is not None:
            with self.errors.lock.lock():
                self.errors.path.write_bytes(b"")  # every other trial's records go too


class ReportThenError(NePSState):
    """Commits a report, then appends its error record in a second step, as NePS 0.17 (D11).

    A worker killed between the two leaves a crashed trial without its record.
    """

    def _commit_report(
        self,
        new: _trial.Trial,
        error: _errdump.SerializableTrialError | None,
        worker_id: str,
        prepared: _repo.PreparedUpdate | None,
    ) -> None:
        super()._commit_report(new, None, worker_id, prepared)
        errors = self._repo.errors
        if error is not None and errors is not None:
            with errors.lock.lock():
                errors.end_last_line()
                errors.append(error.to_line())


class CleanLosesErrors(NePSState):
    """Resetting or removing a trial by id empties the whole error dump, as NePS 0.17 (D10)."""

    repo_class = _EmptiesErrorsRepo


BY_DEFECT: dict[str, str] = {
    "D1": "EmptyAfterCacheLoss",
    "D2": "UnlockedCreate",
    "D3": "InPlaceWrites",
    "D4": "TornTailBreaksReaders",
    "D5": "UncheckedIds",
    "D6": "RawParseErrors",
    "D7": "TwoStepClaim",
    "D8": "RereadsEverything",
    "D9": "CacheBeforeFolder",
    "D10": "CleanLosesErrors",
    "D11": "ReportThenError",
}
"""The control of each known defect."""

__all__ = [
    "BY_DEFECT",
    "CacheBeforeFolder",
    "CleanLosesErrors",
    "EmptyAfterCacheLoss",
    "EqualBatchTimes",
    "InPlaceWrites",
    "LossyConsolidation",
    "NoCrashRecovery",
    "RawParseErrors",
    "ReportThenError",
    "RereadsEverything",
    "RuntimeReportsLoseErrors",
    "SkipsJournalFsync",
    "SplitClaim",
    "StaleCacheRead",
    "StaleConsolidation",
    "TakesBackFromTheLiving",
    "TornTailBreaksReaders",
    "TrustsDerivedFiles",
    "TwoStepClaim",
    "UncheckedIds",
    "UnlockedCreate",
    "UnlockedSampling",
    "UnlockedWorkerIds",
    "write_in_place",
]
