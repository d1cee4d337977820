"""``NePSState``: the run directory shared by every worker, behind its locks."""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, overload

from neps_state import _permissions as permissions
from neps_state._boot import current_boot, is_checked, record_checked
from neps_state._errdump import ErrDump, ErrorLog, SerializableTrialError
from neps_state._errors import (
    CorruptedFileError,
    IllegalTransitionError,
    InvalidSampleError,
    NotARunDirectoryError,
    OptimizerInfoMismatchError,
    TrialNotFoundError,
    UsageError,
)
from neps_state._io import (
    dump_yaml,
    fault_point,
    is_real_dir,
    load_pickle,
    load_yaml,
    mkdir,
    read_file,
    rename,
    write_atomic,
)
from neps_state._locks import FileLocker
from neps_state._optimizer import (
    AskFunction,
    OptimizationState,
    OptimizerInfo,
    SampledConfig,
    adopt_state,
)
from neps_state._proc import pid
from neps_state._repo import Repair, TrialRepo
from neps_state._settings import Settings
from neps_state._spare import SpareFile, sweep
from neps_state._trial import Report, State, Trial, validate_trial_id
from neps_state._trialfiles import TrialWriteHint, list_trial_ids, read_trial

logger = logging.getLogger(__name__)

OPTIMIZER_INFO_FILE = "optimizer_info.yaml"
OPTIMIZER_STATE_FILE = "optimizer_state.pkl"
SHARED_ERRORS_FILE = "shared_errors.jsonl"
CONFIGS_DIR = "configs"
N_UNSAFE_RETRIES = 10


def _as_sample(obj: object, index: int, count: int) -> SampledConfig:
    """A sample of any class with NePS's shape (``id``, ``config``, ``previous_config_id``).

    NePS's own ``SampledConfig`` passes, as does this package's; anything else is an
    ``InvalidSampleError`` saying which sample and what is wrong with it.
    """
    which = "the sample" if count == 1 else f"sample {index + 1} of {count}"
    missing = [a for a in ("id", "config") if not hasattr(obj, a)]
    if missing:
        raise InvalidSampleError(
            f"The optimizer must return SampledConfig(s) (id, config, previous_config_id);"
            f" {which} has no {' or '.join(missing)}: {obj!r}"
        )
    tid, config = getattr(obj, "id"), getattr(obj, "config")  # noqa: B009 - any class
    previous = getattr(obj, "previous_config_id", None)
    if not isinstance(tid, str):
        raise InvalidSampleError(f"{which}: id must be a str, not {type(tid).__name__} {tid!r}")
    if not isinstance(config, Mapping):
        raise InvalidSampleError(f"{which} ({tid!r}): config must be a mapping, not {config!r}")
    if previous is not None and not isinstance(previous, str):
        raise InvalidSampleError(
            f"{which} ({tid!r}): previous_config_id must be a str or None, not {previous!r}"
        )
    if isinstance(obj, SampledConfig):
        return obj
    return SampledConfig(id=tid, config=config, previous_config_id=previous)


class _CopyingView(Mapping[str, Trial]):
    """The trials as the optimizer sees them: O(1) to hand over, a copy per access."""

    def __init__(self, trials: Mapping[str, Trial]) -> None:
        self._trials = trials

    def __getitem__(self, trial_id: str) -> Trial:
        return self._trials[trial_id].clone()

    def __iter__(self) -> Iterator[str]:
        return iter(self._trials)

    def __len__(self) -> int:
        return len(self._trials)

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._trials


class NePSState:
    """The shared state of one optimization run; every public method is one critical section.

    Create it with :meth:`create_or_load`. A handle may be pickled and sent to
    another process (spawn included); it reopens its locks there. A handle keeps
    an in-memory view of the trials: use one handle per thread (they are cheap;
    handles exclude each other through the file locks, within a process too).
    """

    repo_class: ClassVar[type[TrialRepo]] = TrialRepo

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self._optimizer_info_path = path / OPTIMIZER_INFO_FILE
        self._optimizer_state_path = path / OPTIMIZER_STATE_FILE
        self._shared_errors_path = path / SHARED_ERRORS_FILE
        self._trial_lock = FileLocker(path / ".configs.lock", settings)
        self._optimizer_lock = FileLocker(path / ".optimizer.lock", settings)
        self._err_lock = FileLocker(path / ".errors.lock", settings)
        self._errors = ErrorLog(self._shared_errors_path, self._err_lock, fsync=settings.fsync)
        self._trial_repo = self.repo_class(
            path / CONFIGS_DIR,
            settings=settings,
            errors=self._errors,
            sync_on_commit=False,
            state_file=self._optimizer_state_path,
        )
        self._state_spare = SpareFile(self._optimizer_state_path)
        self._sampled_with: tuple[bytes, OptimizationState] | None = None
        self._checked_pid = -1

    @contextmanager
    def _trials(self) -> Iterator[None]:
        """Hold the trial lock; fsync the commits made under it after releasing it.

        Flushing outside the lock lets workers that commit at the same time share
        one disk commit; the caller returns (acknowledges) only after the flush.
        """
        with self._trial_lock.lock(), self._trial_repo.holding():
            yield
        self._trial_repo.flush()

    def __reduce__(self) -> tuple[type[NePSState], tuple[Path, Settings]]:
        # Only the location travels; the new process opens its own descriptors.
        return (type(self), (self.path, self.settings))

    def __repr__(self) -> str:
        return f"NePSState({str(self.path)!r})"

    # -- creation -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, *, settings: Settings | None = None) -> NePSState:
        """Open the existing run at ``path``; ``NotARunDirectoryError`` if there is none."""
        return cls.create_or_load(path, load_only=True, settings=settings)

    @classmethod
    def create_or_load(
        cls,
        path: Path | str,
        *,
        load_only: bool = False,
        optimizer_info: OptimizerInfo | None = None,
        optimizer_state: OptimizationState | None = None,
        settings: Settings | None = None,
    ) -> NePSState:
        """Create the run directory at ``path``, or load it if it exists.

        Safe when many processes call it at once: exactly one creates; the
        others load, and get ``OptimizerInfoMismatchError`` (a ``NePSError``)
        if their optimizer info differs from the one on disk.
        """
        root = Path(path).absolute()
        if root.exists() and not root.is_dir():
            raise NotARunDirectoryError(root, "it is not a directory")
        if load_only:
            if not (root / OPTIMIZER_INFO_FILE).exists():
                raise NotARunDirectoryError(root, f"it has no {OPTIMIZER_INFO_FILE}")
        elif optimizer_info is None or optimizer_state is None:
            raise UsageError(
                f"create_or_load({str(root)!r}) needs optimizer_info and optimizer_state to"
                " create a run; to open an existing run only, use NePSState.load(path)"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        mkdir(root, exist_ok=True)
        state = cls(root, Settings.from_env() if settings is None else settings)
        permissions.check(root, strict=state.settings.strict_permissions)
        with state._optimizer_lock.lock():
            if state._optimizer_info_path.exists():
                state._check_existing(None if load_only else optimizer_info)
            elif load_only or optimizer_info is None or optimizer_state is None:
                raise NotARunDirectoryError(root, f"it has no {OPTIMIZER_INFO_FILE}")
            else:
                state._create(optimizer_info, optimizer_state)
            if not load_only:
                # The root holds a handful of entries; configs/ (one per trial) is
                # swept by consolidations and recoveries, not at every start-up.
                sweep(root)
            state._ensure_checked()
            with state._trials():
                state._trial_repo.sync()
            state._read_optimizer_state()
        return state

    @classmethod
    def repair(
        cls, path: Path | str, *, dry_run: bool = False, settings: Settings | None = None
    ) -> list[Repair]:
        """Check and rebuild every file derived from the journal, as after a power loss.

        What ``create_or_load`` does by itself after a reboot, run explicitly; what
        cannot be rebuilt (see ``TrialRepo.recover``) is moved aside and listed, so
        the run can go on with what remains. Returns the changes (``dry_run``: the
        changes it would make, making none). Durability should be the run's own
        (``settings`` or ``NEPS_STATE_DURABILITY``): it decides which files are trusted.
        """
        root = Path(path).absolute()
        if not (root / OPTIMIZER_INFO_FILE).is_file():
            raise NotARunDirectoryError(root, f"it has no {OPTIMIZER_INFO_FILE}")
        if not is_real_dir(root / CONFIGS_DIR):
            raise CorruptedFileError(root / CONFIGS_DIR, "is missing or not a folder")
        state = cls(root, Settings.from_env() if settings is None else settings)
        with state._optimizer_lock.lock(), state._trials():
            return state._recover(current_boot(), dry_run=dry_run, salvage=True)

    def _check_existing(self, info: OptimizerInfo | None) -> None:
        """Check a run directory that exists: readable, and ``info`` (if given) its optimizer's."""
        if not is_real_dir(self.path / CONFIGS_DIR):
            raise CorruptedFileError(self.path / CONFIGS_DIR, "is missing or not a folder")
        on_disk = self._read_optimizer_info()
        if info is not None and on_disk != info:
            raise OptimizerInfoMismatchError(self.path, on_disk, info)

    def _ensure_checked(self) -> None:
        """Once per process: after a reboot, rebuild what a power loss may have broken.

        Folders and the optimizer state file are not fsynced (see ``_boot``); the
        first handle of a new boot compares them with the journal and repairs them.
        Cheap afterwards: one small file is read per handle and process.
        """
        if self._checked_pid == pid():
            return
        configs, boot = self.path / CONFIGS_DIR, current_boot()
        if not is_checked(configs, boot):
            with self._optimizer_lock.lock(), self._trials():
                if not is_checked(configs, boot):
                    self._recover(boot)
        self._checked_pid = pid()

    def _recover(
        self, boot: str | None, *, dry_run: bool = False, salvage: bool = False
    ) -> list[Repair]:
        """Both locks held: repair the trial files, then the optimizer state; record ``boot``."""
        repairs = self._trial_repo.recover(dry_run=dry_run, salvage=salvage)
        repairs += self._recover_optimizer_state(dry_run=dry_run)
        self._read_optimizer_info()
        if not dry_run:
            record_checked(self.path / CONFIGS_DIR, boot)
        return repairs

    def _recover_optimizer_state(self, *, dry_run: bool) -> list[Repair]:
        path, journaled = self._optimizer_state_path, self._trial_repo.optimizer_state
        if journaled is None:
            try:
                self._read_optimizer_state()
            except CorruptedFileError as e:
                raise CorruptedFileError(
                    path, f"{e.problem}; the journal holds no copy to rebuild it from"
                ) from None
            return []
        on_disk: bytes | None = None
        if os.path.lexists(path):
            try:
                on_disk = read_file(path)
            except CorruptedFileError:
                on_disk = b"/"  # a folder, link or FIFO there
        if on_disk == journaled:
            return []
        how = "missing" if on_disk is None else "empty" if not on_disk else "stale or damaged"
        folder = is_real_dir(path)
        if folder:
            how = "a folder is in its place (moved aside)"
        if not dry_run:
            if folder:
                rename(path, path.with_name(f".{path.name}.damaged-{secrets.token_hex(4)}"))
            write_atomic(path, journaled, fsync=False)
        return [Repair(path, f"rewritten from the journal: {how}")]

    def _create(self, info: OptimizerInfo, opt_state: OptimizationState) -> None:
        configs = self.path / CONFIGS_DIR
        if configs.is_dir() and list_trial_ids(configs):
            raise NotARunDirectoryError(
                self.path, f"it holds trial folders but no {OPTIMIZER_INFO_FILE}"
            )
        info_bytes = dump_yaml(info.to_dict(), self._optimizer_info_path)
        # Created once, so always made durable: a power loss never unmakes a run.
        self._write_optimizer_state(pickle.dumps(opt_state, pickle.HIGHEST_PROTOCOL), fsync=True)
        fault_point("create.state_written")
        mkdir(configs, exist_ok=True)
        self._trial_repo.scratch_dir()
        # The info file is written last: its presence means "created".
        write_atomic(self._optimizer_info_path, info_bytes, fsync=True)
        fault_point("create.info_written")
        with self._trials():
            self._trial_repo.sync()
        record_checked(configs, current_boot())

    # -- optimizer files ----------------------------------------------------------

    def _read_optimizer_info(self) -> OptimizerInfo:
        p = self._optimizer_info_path
        data = load_yaml(p)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise CorruptedFileError(p, "must be a mapping with a string 'name'")
        if "info" not in data:
            raise CorruptedFileError(p, "lacks the key 'info' (truncated?)")
        info = data["info"] or {}
        if not isinstance(info, dict):
            raise CorruptedFileError(p, "'info' must be a mapping")
        return OptimizerInfo(name=data["name"], info=info)

    def _read_optimizer_state(self) -> OptimizationState:
        """The newest state: the journal's (as of the last sync), else the file's."""
        journaled = self._trial_repo.optimizer_state
        if journaled is None:
            path = self._optimizer_state_path
            obj = load_pickle(path, allow=self.settings.pickle_allow)
        else:
            path = self._trial_repo.cache_path
            obj = load_pickle(path, journaled, allow=self.settings.pickle_allow)
        state = adopt_state(obj)  # (NePS's own class, in a run NePS wrote)
        if state is None:
            raise CorruptedFileError(
                path, f"holds a {type(obj).__name__}, not an OptimizationState"
            )
        return state

    def _write_optimizer_state(self, data: bytes, *, fsync: bool) -> None:
        # Rewritten by every sample, atomically; fsynced only at creation. The
        # journal record of the sample carries the same bytes and is the durable
        # copy: after a power loss this file is rebuilt from it (_recover).
        if not self._state_spare.place(data, fsync=fsync):
            write_atomic(self._optimizer_state_path, data, fsync=fsync)

    def _sync_view(self) -> None:
        """Bring the view up to date: without the trial lock when nothing needs repair."""
        if not self._trial_repo.peek():
            with self._trials():
                self._trial_repo.sync()

    def lock_and_get_optimizer_info(self) -> OptimizerInfo:
        """The optimizer info on disk."""
        self._ensure_checked()
        with self._optimizer_lock.lock():
            return self._read_optimizer_info()

    def lock_and_get_optimizer_state(self) -> OptimizationState:
        """The optimizer state left by the last sample (or the creation)."""
        self._ensure_checked()
        with self._optimizer_lock.lock():
            self._sync_view()
            return self._read_optimizer_state()

    # -- sampling -----------------------------------------------------------------

    @overload
    def lock_and_sample_trial(
        self, optimizer: AskFunction, *, worker_id: str, n: None = None, claim: bool = False
    ) -> Trial: ...
    @overload
    def lock_and_sample_trial(
        self, optimizer: AskFunction, *, worker_id: str, n: int, claim: bool = False
    ) -> list[Trial]: ...

    def lock_and_sample_trial(
        self, optimizer: AskFunction, *, worker_id: str, n: int | None = None, claim: bool = False
    ) -> Trial | list[Trial]:
        """Ask the optimizer for ``n`` new trials (one if None) and store them as pending.

        With ``claim=True`` the first new trial is stored already evaluating by
        ``worker_id``, in the same commit: a worker that samples for itself needs no
        second critical section to claim what it sampled (and nobody can take it).
        """
        self._ensure_checked()
        # Files are created now, outside the locks; under them only written and renamed.
        with self._state_spare.ahead(), self._trial_repo.store_ahead():
            trials = self._sample_locked(optimizer, worker_id=worker_id, n=n, claim=claim)
        # Durable before we return, but flushed outside both locks (see _trials).
        self._trial_repo.flush()
        if n is None:
            return trials[0]
        return trials

    def _sample_locked(
        self, optimizer: AskFunction, *, worker_id: str, n: int | None, claim: bool
    ) -> list[Trial]:
        with self._optimizer_lock.lock():
            self._sync_view()
            view = self._trial_repo.view
            opt_state = self._state_to_sample_with()
            opt_state.seed_snapshot.set_as_global_seed_state()
            budget = opt_state.budget
            if budget is not None:
                budget.used_cost_budget = view.cost.value
                budget.used_evaluations = len(view)
            sampled = optimizer(
                trials=_CopyingView(view),
                budget_info=None if budget is None else budget.clone(),
                n=n,
            )
            opt_state.seed_snapshot.recapture()
            trials = self._new_trials(sampled, n, worker_id)
            if claim and trials:
                trials[0].set_evaluating(time_started=time.time(), worker_id=worker_id)
            state_bytes = pickle.dumps(opt_state, protocol=pickle.HIGHEST_PROTOCOL)
            self._write_optimizer_state(state_bytes, fsync=False)
            fault_point("sample.optimizer_state_written")
            with self._trial_lock.lock():
                self._trial_repo.store_new_trial(trials, optimizer_state=state_bytes)
            self._sampled_with = (state_bytes, opt_state)
        return trials

    def _state_to_sample_with(self) -> OptimizationState:
        """The newest optimizer state, as a fresh object to mutate.

        If no other sample came since this handle's last, that sample's object is
        it (equal to the journal's bytes unpickled), and nothing is read.
        """
        last, self._sampled_with = self._sampled_with, None
        if last is not None and last[0] is self._trial_repo.optimizer_state:
            return last[1]
        return self._read_optimizer_state()

    def _new_trials(self, sampled: object, n: int | None, worker_id: str) -> list[Trial]:
        items: list[object] = sampled if isinstance(sampled, list) else [sampled]
        configs = [_as_sample(c, i, len(items)) for i, c in enumerate(items)]
        limit = 1 if n is None else n
        if len(configs) > limit or (n is None and not configs):
            raise InvalidSampleError(
                f"Asked for {n} config(s), the optimizer returned {len(configs)}"
            )
        view = self._trial_repo.view
        directory = self._trial_repo.directory
        now = time.time()
        trials = []
        for i, c in enumerate(configs):
            previous_location = None
            if c.previous_config_id is not None:
                previous = view.get(c.previous_config_id)
                if previous is None:
                    raise TrialNotFoundError(c.previous_config_id, directory)
                previous_location = previous.metadata.location
            trials.append(
                Trial.new(
                    trial_id=c.id,
                    config=c.config,
                    location=str(directory / f"config_{validate_trial_id(c.id)}"),
                    previous_trial=c.previous_config_id,
                    previous_trial_location=previous_location,
                    # Strictly increasing within a batch: "earliest sampled" is then
                    # the order the optimizer proposed them in, never a tie.
                    time_sampled=now + i * 1e-6,
                    worker_id=worker_id,
                )
            )
        return trials

    # -- claiming and reporting ---------------------------------------------------

    def lock_and_claim_next_pending_trial(self, worker_id: str) -> Trial | None:
        """Take the earliest pending trial and mark it evaluating, in one critical section."""
        self._ensure_checked()
        repo = self._trial_repo
        if repo.peek() and not repo.view.count(State.PENDING):
            # Nothing pending among the committed trials at this instant: a correct
            # answer without the lock (the busy path of every idle worker).
            return None
        with self._trials():
            self._trial_repo.sync()
            pending = self._trial_repo.view.earliest_pending(1)
            if not pending:
                return None
            trial = pending[0].clone()
            trial.set_evaluating(time_started=time.time(), worker_id=worker_id)
            self._trial_repo.update_trial(trial, hints="metadata")
            return trial

    def lock_and_report_trial_evaluation(
        self, trial: Trial, report: Report, *, worker_id: str
    ) -> None:
        """Attach ``report`` to the evaluating ``trial``; an error is also added to the dump."""
        self._ensure_checked()
        trial.report = report
        new = trial.clone()
        reported = State(report.reported_as)
        if new.metadata.state is State.EVALUATING:
            new.metadata.state = reported
        elif new.metadata.state is not reported:
            raise IllegalTransitionError(
                trial.id,
                new.metadata.state.value,
                reported.value,
                "the trial object given is not evaluating",
            )
        error = None
        if report.err is not None:
            error = SerializableTrialError(
                trial_id=trial.id,
                worker_id=str(worker_id),
                err_type=type(report.err).__name__,
                err=str(report.err),
                tb=report.tb,
            )
        hints: tuple[TrialWriteHint, ...] = ("report", "metadata")
        # Written now, outside the lock; under it only renamed.
        prepared = self._trial_repo.prepare_update(new, hints)
        try:
            with self._trials():
                self._trial_repo.sync()
                current = self._trial_repo.view.get(trial.id)
                if current is not None and current.metadata.state is not State.EVALUATING:
                    # Reported trials must come from evaluating: no double reports.
                    raise IllegalTransitionError(
                        trial.id,
                        current.metadata.state.value,
                        reported.value,
                        "it is not being evaluated",
                    )
                owner = None if current is None else current.metadata.evaluating_worker_id
                if owner is not None and owner != str(worker_id):
                    # The same refusal as put_updated_trial's takeover of a claim.
                    raise IllegalTransitionError(
                        trial.id,
                        State.EVALUATING.value,
                        reported.value,
                        f"already evaluated by worker {owner!r}, not {str(worker_id)!r}",
                    )
                self._trial_repo.update_trial(new, hints=hints, error=error, prepared=prepared)
        finally:
            prepared.discard()

    def put_updated_trial(
        self, trial: Trial, *, hints: list[TrialWriteHint] | TrialWriteHint | None = None
    ) -> None:
        """Store a new version of an existing trial (only legal state changes)."""
        self._ensure_checked()
        with self._trials():
            self._trial_repo.update_trial(trial, hints=hints)

    # -- reading ------------------------------------------------------------------

    def lock_and_read_trials(self) -> dict[str, Trial]:
        """Every trial, by id."""
        self._ensure_checked()
        with self._trials():
            return self._trial_repo.latest()

    def all_trial_ids(self) -> list[str]:
        """Every trial id."""
        self._ensure_checked()
        with self._trials():
            self._trial_repo.sync()
            return list(self._trial_repo.view)

    def lock_and_get_trial_by_id(self, trial_id: str) -> Trial:
        """One trial; ``TrialNotFoundError`` if there is none with this id."""
        self._ensure_checked()
        validate_trial_id(trial_id)
        self._sync_view()
        trial = self._trial_repo.view.get(trial_id)
        if trial is None:
            raise TrialNotFoundError(trial_id, self._trial_repo.directory / f"config_{trial_id}")
        return trial.clone()

    def unsafe_retry_get_trial_by_id(self, trial_id: str) -> Trial:
        """Read one trial from its folder without the lock, retrying a failed read.

        A file that stays unreadable is a ``CorruptedFileError`` naming it.
        """
        self._ensure_checked()
        for attempt in range(N_UNSAFE_RETRIES):
            try:
                return read_trial(self._trial_repo.directory, trial_id)
            except CorruptedFileError as e:
                if attempt == N_UNSAFE_RETRIES - 1:
                    raise CorruptedFileError(
                        e.path, f"{e.problem} (still, after {N_UNSAFE_RETRIES} reads)"
                    ) from None
                logger.debug("Reading trial %r failed, retrying: %s", trial_id, e)
                time.sleep(0.01)
        raise AssertionError("unreachable")  # pragma: no cover

    @overload
    def lock_and_get_next_pending_trial(self) -> Trial | None: ...
    @overload
    def lock_and_get_next_pending_trial(self, n: int) -> list[Trial]: ...

    def lock_and_get_next_pending_trial(self, n: int | None = None) -> Trial | list[Trial] | None:
        """The earliest sampled pending trial (or the ``n`` earliest); does not claim it."""
        self._ensure_checked()
        with self._trials():
            self._trial_repo.sync()
            pending = [
                t.clone() for t in self._trial_repo.view.earliest_pending(1 if n is None else n)
            ]
        if n is None:
            return pending[0] if pending else None
        return pending

    def lock_and_get_current_evaluating_trials(self) -> list[Trial]:
        """Every trial being evaluated."""
        self._ensure_checked()
        with self._trials():
            self._trial_repo.sync()
            view = self._trial_repo.view
            return [view[tid].clone() for tid in view.ids_in(State.EVALUATING)]

    def lock_and_get_errors(self) -> ErrDump:
        """Every error record of the run."""
        self._ensure_checked()
        with self._err_lock.lock():
            return self._errors.read()

    def lock_and_consolidate_cache(self) -> None:
        """Rewrite the trial cache as one snapshot now."""
        self._ensure_checked()
        with self._trials():
            self._trial_repo.consolidate()
