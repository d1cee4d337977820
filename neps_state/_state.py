"""``NePSState``: the run directory shared by every worker, behind its locks."""

from __future__ import annotations

import logging
import math
import os
import pickle
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, overload

from neps_state import _permissions as permissions
from neps_state import _space
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
    WorkerIdExistsError,
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
    BudgetInfo,
    OptimizationState,
    OptimizerInfo,
    SampledConfig,
    adopt_state,
    state_file_bytes,
)
from neps_state._owners import is_dead, release_dead
from neps_state._proc import gc_paused, pid
from neps_state._repo import PreparedUpdate, Repair, TrialRepo, summarize
from neps_state._runtime import RuntimeRepo, SampleStash, valid_evaluated
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
        self._pipeline_space_path = path / _space.SPACE_FILE
        self._trial_lock = FileLocker(path / ".configs.lock", settings, listener=self)
        self._optimizer_lock = FileLocker(path / ".optimizer.lock", settings, listener=self)
        self._err_lock = FileLocker(path / ".errors.lock", settings, listener=self)
        self._errors = ErrorLog(self._shared_errors_path, self._err_lock, fsync=settings.fsync)
        self._repo = self.repo_class(
            path / CONFIGS_DIR,
            settings=settings,
            errors=self._errors,
            sync_on_commit=False,
            state_file=self._optimizer_state_path,
        )
        self._trial_repo = RuntimeRepo(self)
        """The trials as NePS 0.17's runtime reaches them (``state._trial_repo``)."""
        self._optimizer_info: dict[str, Any] = {}
        """The run's optimizer info as NePS keeps it (a dict), once created or loaded."""
        self._state_spare = SpareFile(self._optimizer_state_path)
        self._sampled_with: tuple[bytes, OptimizationState] | None = None
        self._stash: SampleStash | None = None
        self._checked_pid = -1

    @contextmanager
    def _trials(self) -> Iterator[None]:
        """Hold the trial lock (the listener methods below do the rest)."""
        with self._trial_lock.lock():
            yield

    # -- the locks' listener: whoever takes them, this handle's own methods or NePS's
    # runtime (``state._trial_lock.lock()``), holds them the same way.

    def locked(self, locker: FileLocker) -> None:
        """A lock was taken: with the trial lock, one read of the journal serves the hold."""
        if locker is self._trial_lock:
            self._repo.begin_hold()

    def unlocking(self, locker: FileLocker) -> None:
        """A lock is given back: what was only valid while holding it is forgotten."""
        if locker is self._trial_lock:
            self._repo.end_hold()
        elif locker is self._optimizer_lock:
            self._stash = None

    def unlocked(self, locker: FileLocker) -> None:
        """A lock was given back; after the last, the commits made are fsynced.

        Flushing outside the locks lets workers that commit at the same time share
        one disk commit; an operation returns (acknowledges) only after the flush.
        """
        del locker
        locks = (self._trial_lock, self._optimizer_lock, self._err_lock)
        if not any(getattr(lock, "held", False) for lock in locks):
            self._repo.flush()

    # -- what callers get and give: overridden where NePS's own classes are wanted

    def _out(self, trial: Trial) -> Trial:
        """A trial of the view as handed to a caller (a copy the caller may mutate)."""
        return trial.clone()

    def _out_all(self, trials: Iterable[tuple[str, Trial]], *, complete: bool) -> dict[str, Any]:
        """Trials of the view by id, as handed to a caller (``complete``: the whole view)."""
        del complete
        with gc_paused():
            return {tid: self._out(t) for tid, t in trials}

    def _hand(self, trial: Trial) -> Trial:
        """A trial the caller already owns (made for it) as handed over."""
        return trial

    def _in(self, trial: Any) -> Trial:
        """A caller's trial as this package's (checked and copied when stored)."""
        return trial  # type: ignore[no-any-return]

    def _out_state(self, state: OptimizationState) -> OptimizationState:
        """An optimizer state as handed to a caller."""
        return state

    def _in_state(self, state: Any) -> OptimizationState:
        """A caller's optimizer state as this package's."""
        adopted = adopt_state(state)
        if adopted is None:
            raise UsageError(f"optimizer_state must be an OptimizationState, not {state!r}")
        return adopted

    def __reduce__(self) -> tuple[type[NePSState], tuple[Path, Settings]]:
        # Only the location travels; the new process opens its own descriptors.
        return (type(self), (self.path, self.settings))

    def __repr__(self) -> str:
        return f"NePSState({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        # Two handles are equal when they open the same run with the same settings
        # (NePS compares its handles, e.g. one created and one loaded).
        if not isinstance(other, NePSState):
            return NotImplemented
        return self.path == other.path and self.settings == other.settings

    def __hash__(self) -> int:
        return hash(self.path)

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
        optimizer_info: OptimizerInfo | Mapping[str, Any] | None = None,
        optimizer_state: OptimizationState | None = None,
        pipeline_space: Any = None,
        settings: Settings | None = None,
    ) -> NePSState:
        """Create the run directory at ``path``, or load it if it exists.

        Safe when many processes call it at once: exactly one creates; the
        others load, and get ``OptimizerInfoMismatchError`` (a ``NePSError``)
        if the optimizer info on disk does not accept theirs (NePS's rule: the same
        name, and every recorded setting the same; see ``OptimizerInfo.accepts``).
        ``optimizer_info`` may be NePS's dict. ``pipeline_space`` (NePS's) is saved
        where NePS saves it, at creation; a later one must match it, and is compared
        without unpickling the saved one (``SearchSpaceMismatchError`` otherwise).
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
        info = None if optimizer_info is None else OptimizerInfo.of(optimizer_info)
        root.parent.mkdir(parents=True, exist_ok=True)
        mkdir(root, exist_ok=True)
        state = cls(root, Settings.from_env() if settings is None else settings)
        opt_state = None if optimizer_state is None else state._in_state(optimizer_state)
        permissions.check(root, strict=state.settings.strict_permissions)
        with state._optimizer_lock.lock():
            if state._optimizer_info_path.exists():
                state._check_existing(None if load_only else info, pipeline_space)
            elif load_only or info is None or opt_state is None:
                raise NotARunDirectoryError(root, f"it has no {OPTIMIZER_INFO_FILE}")
            else:
                state._create(info, opt_state, pipeline_space)
            if not load_only:
                # The root holds a handful of entries; configs/ (one per trial) is
                # swept by consolidations and recoveries, not at every start-up.
                sweep(root)
            state._ensure_checked()
            with state._trials():
                state._repo.sync()
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

    def _check_existing(self, info: OptimizerInfo | None, space: Any = None) -> None:
        """Check a run directory that exists (optimizer lock held).

        It must be readable, accept ``info`` and ``space`` (if given). A fidelity name
        ``info`` derived that the file lacks is recorded (as NePS does: its summaries
        read it back).
        """
        if not is_real_dir(self.path / CONFIGS_DIR):
            raise CorruptedFileError(self.path / CONFIGS_DIR, "is missing or not a folder")
        on_disk = self._read_optimizer_info()
        if info is None:
            return
        if not on_disk.accepts(info):
            raise OptimizerInfoMismatchError(self.path, on_disk, info)
        if space is not None:
            _space.check(self._pipeline_space_path, space)
        if on_disk.fidelity_name is None and info.fidelity_name is not None:
            derived = {**(on_disk.derived or {}), "fidelity": (info.derived or {})["fidelity"]}
            backfilled = OptimizerInfo(on_disk.name, on_disk.info, derived)
            data = dump_yaml(backfilled.to_dict(), self._optimizer_info_path)
            write_atomic(self._optimizer_info_path, data, fsync=True)
            self._optimizer_info = backfilled.to_dict()

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
        repairs = self._repo.recover(dry_run=dry_run, salvage=salvage)
        repairs += self._recover_optimizer_state(dry_run=dry_run)
        self._read_optimizer_info()
        if not dry_run:
            record_checked(self.path / CONFIGS_DIR, boot)
            if repairs:
                logger.warning(
                    "Recovered %s after a reboot, from its journal: %s (each file at debug level)",
                    self.path,
                    summarize(repairs, self.path),
                )
        return repairs

    def _recover_optimizer_state(self, *, dry_run: bool) -> list[Repair]:
        path, journaled = self._optimizer_state_path, self._repo.optimizer_state
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
        if on_disk == state_file_bytes(journaled):
            return []
        how = "missing" if on_disk is None else "empty" if not on_disk else "stale or damaged"
        folder = is_real_dir(path)
        if folder:
            how = "a folder is in its place (moved aside)"
        if not dry_run:
            if folder:
                rename(path, path.with_name(f".{path.name}.damaged-{secrets.token_hex(4)}"))
            write_atomic(path, state_file_bytes(journaled), fsync=False)
        return [Repair(path, f"rewritten from the journal: {how}")]

    def _create(self, info: OptimizerInfo, opt_state: OptimizationState, space: Any) -> None:
        configs = self.path / CONFIGS_DIR
        if configs.is_dir() and list_trial_ids(configs):
            raise NotARunDirectoryError(
                self.path, f"it holds trial folders but no {OPTIMIZER_INFO_FILE}"
            )
        info_bytes = dump_yaml(info.to_dict(), self._optimizer_info_path)
        # Created once, so always made durable: a power loss never unmakes a run.
        self._write_optimizer_state(pickle.dumps(opt_state, pickle.HIGHEST_PROTOCOL), fsync=True)
        if space is not None:
            _space.save(self._pipeline_space_path, space)
        fault_point("create.state_written")
        mkdir(configs, exist_ok=True)
        self._repo.scratch_dir()
        # The info file is written last: its presence means "created".
        write_atomic(self._optimizer_info_path, info_bytes, fsync=True)
        self._optimizer_info = info.to_dict()
        fault_point("create.info_written")
        with self._trials():
            self._repo.sync()
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
        derived = data.get("derived")
        if derived is not None and not isinstance(derived, dict):
            raise CorruptedFileError(p, "'derived' must be a mapping")
        read = OptimizerInfo(name=data["name"], info=info, derived=derived)
        self._optimizer_info = read.to_dict()
        return read

    def _read_optimizer_state(self) -> OptimizationState:
        """The newest state: the journal's (as of the last sync), else the file's."""
        journaled = self._repo.optimizer_state
        if journaled is None:
            path = self._optimizer_state_path
            obj = load_pickle(path, allow=self.settings.pickle_allow)
        else:
            path = self._repo.cache_path
            obj = load_pickle(path, journaled, allow=self.settings.pickle_allow)
        state = adopt_state(obj)  # (NePS's own class, in a run NePS wrote)
        if state is None:
            raise CorruptedFileError(
                path, f"holds a {type(obj).__name__}, not an OptimizationState"
            )
        return state

    def _write_optimizer_state(self, data: bytes, *, fsync: bool) -> None:
        # Rewritten by every sample, atomically; fsynced only at creation. The
        # journal record of the sample carries the same state and is the durable
        # copy: after a power loss this file is rebuilt from it (_recover). The file
        # wraps it so that NePS's own state refuses to read it (kept_by_neps_state).
        wrapped = state_file_bytes(data)
        if not self._state_spare.place(wrapped, fsync=fsync):
            write_atomic(self._optimizer_state_path, wrapped, fsync=fsync)

    def _sync_view(self) -> None:
        """Bring the view up to date: without the trial lock when nothing needs repair."""
        if not self._repo.peek():
            with self._trials():
                self._repo.sync()

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
            return self._out_state(self._read_optimizer_state())

    def _get_optimizer_state(self) -> OptimizationState:
        """The newest optimizer state (NePS's runtime calls it holding the optimizer lock)."""
        self._ensure_checked()
        self._sync_view()
        return self._out_state(self._read_optimizer_state())

    @property
    def fidelity_name(self) -> str | None:
        """The key a fidelity takes in a trial's config, as the optimizer info records it."""
        return (
            OptimizerInfo.of(self._optimizer_info).fidelity_name if self._optimizer_info else None
        )

    # -- the optimizer state's own operations (each one journaled commit) -------------

    def _commit_state(self, opt_state: OptimizationState) -> None:
        """Commit a new optimizer state alone (both locks held)."""
        data = pickle.dumps(opt_state, protocol=pickle.HIGHEST_PROTOCOL)
        self._write_optimizer_state(data, fsync=False)
        fault_point("state.written")
        self._repo.store_new_trial([], optimizer_state=data)
        fault_point("state.committed")
        self._sampled_with = (data, opt_state)

    def lock_and_set_new_worker_id(self, worker_id: str | None = None) -> str:
        """Record a new worker of the run and return its id (``worker_<k>`` if None).

        ``WorkerIdExistsError`` (a ``NePSError``) if another worker has that id.
        """
        self._ensure_checked()
        with self._optimizer_lock.lock(), self._trials():
            self._repo.sync()
            opt_state = self._state_to_sample_with()
            taken = list(opt_state.worker_ids or [])
            wid = f"worker_{len(taken)}" if worker_id is None else str(worker_id)
            if wid in taken:
                raise WorkerIdExistsError(wid, taken)
            opt_state.worker_ids = [*taken, wid]
            self._commit_state(opt_state)
        return wid

    def lock_and_update_global_budgets(
        self,
        *,
        total_evaluations_to_spend: int | None,
        total_cost_to_spend: float | None,
        total_fidelities_to_spend: float | None,
    ) -> None:
        """Set the run's total budgets (those given; all None changes nothing)."""
        given = {
            "total_evaluations_to_spend": total_evaluations_to_spend,
            "total_cost_to_spend": total_cost_to_spend,
            "total_fidelities_to_spend": total_fidelities_to_spend,
        }
        if all(v is None for v in given.values()):
            return
        self._ensure_checked()
        with self._optimizer_lock.lock(), self._trials():
            self._repo.sync()
            opt_state = self._state_to_sample_with()
            if opt_state.budget is None:
                opt_state.budget = BudgetInfo()
            for name, value in given.items():
                if value is not None:
                    setattr(opt_state.budget, name, value)
            self._commit_state(opt_state)

    def lock_and_get_global_budgets(self) -> tuple[int | None, float | None, float | None]:
        """The run's total budgets: (evaluations, cost, fidelities), each None if unset."""
        self._ensure_checked()
        with self._optimizer_lock.lock():
            self._sync_view()
            budget = self._read_optimizer_state().budget
        if budget is None:
            return None, None, None
        return (
            budget.total_evaluations_to_spend,
            budget.total_cost_to_spend,
            budget.total_fidelities_to_spend,
        )

    def lock_and_get_search_space(self) -> Any:
        """The pipeline space saved at creation, or None.

        The one call that unpickles a file of the run in full (the space is the
        user's own classes): it runs code from the run directory, so call it only
        on a directory you trust.
        """
        self._ensure_checked()
        with self._optimizer_lock.lock():
            return _space.load(self._pipeline_space_path)

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
        with self._state_spare.ahead(), self._repo.store_ahead():
            trials = self._sample_locked(optimizer, worker_id=worker_id, n=n, claim=claim)
        if n is None:
            return self._hand(trials[0])
        return [self._hand(t) for t in trials]

    def _sample_locked(
        self, optimizer: AskFunction, *, worker_id: str, n: int | None, claim: bool
    ) -> list[Trial]:
        with self._optimizer_lock.lock():
            self._sync_view()
            view = self._repo.view
            trials, state_bytes = self._ask(
                optimizer, _CopyingView(view), view.cost.value, n, worker_id
            )
            if claim and trials:
                trials[0].set_evaluating(time_started=time.time(), worker_id=worker_id)
            self._store_sampled(trials, state_bytes)
        return trials

    def _ask(
        self,
        optimizer: AskFunction,
        trials: Mapping[str, Any],
        used_cost: float,
        n: int | None,
        worker_id: str,
    ) -> tuple[list[Trial], bytes]:
        """Ask the optimizer (optimizer lock held): the new trials and the state after."""
        opt_state = self._state_to_sample_with()
        opt_state.seed_snapshot.set_as_global_seed_state()
        budget = opt_state.budget
        if budget is not None:
            budget.used_cost_budget = used_cost
            budget.used_evaluations = len(trials)
        sampled = optimizer(
            trials=trials,
            budget_info=None if budget is None else self._out_budget(budget.clone()),
            n=n,
        )
        opt_state.seed_snapshot.recapture()
        new = self._new_trials(sampled, n, worker_id)
        state_bytes = pickle.dumps(opt_state, protocol=pickle.HIGHEST_PROTOCOL)
        self._sampled_with = None
        self._stash = SampleStash(tuple(t.id for t in new), state_bytes, opt_state)
        return new, state_bytes

    def _out_budget(self, budget: BudgetInfo) -> BudgetInfo:
        """The budget as handed to the optimizer."""
        return budget

    def _store_sampled(self, trials: list[Trial], state_bytes: bytes) -> None:
        """Commit sampled trials with the optimizer state after them (optimizer lock held)."""
        self._write_optimizer_state(state_bytes, fsync=False)
        fault_point("sample.optimizer_state_written")
        with self._trials():
            self._repo.store_new_trial(trials, optimizer_state=state_bytes)
        stash, self._stash = self._stash, None
        if stash is not None and stash.state_bytes is state_bytes:
            self._sampled_with = (state_bytes, stash.state)

    def _state_to_sample_with(self) -> OptimizationState:
        """The newest optimizer state, as a fresh object to mutate.

        If no other sample came since this handle's last, that sample's object is
        it (equal to the journal's bytes unpickled), and nothing is read.
        """
        last, self._sampled_with = self._sampled_with, None
        if last is not None and last[0] is self._repo.optimizer_state:
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
        view = self._repo.view
        directory = self._repo.directory
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

    @overload
    def _sample_trial(
        self, optimizer: AskFunction, *, worker_id: str, trials: Mapping[str, Any], n: None
    ) -> Trial: ...
    @overload
    def _sample_trial(
        self, optimizer: AskFunction, *, worker_id: str, trials: Mapping[str, Any], n: int
    ) -> list[Trial]: ...

    def _sample_trial(
        self,
        optimizer: AskFunction,
        *,
        worker_id: str,
        trials: Mapping[str, Any],
        n: int | None,
    ) -> Trial | list[Trial]:
        """NePS's runtime's sample: ask, but store nothing (the optimizer lock held).

        The runtime then stores the trials with ``_trial_repo.store_new_trial``,
        still holding the optimizer lock: that commit carries the optimizer state
        this sample left, so sample and store are one commit, or none.
        """
        if not self._optimizer_lock.held:
            raise UsageError("_sample_trial needs the optimizer lock: hold state._optimizer_lock")
        self._ensure_checked()
        self._sync_view()
        cost = math.fsum(
            t.report.cost for t in trials.values() if t.report is not None and t.report.cost
        )
        new, _ = self._ask(optimizer, trials, cost, n, worker_id)
        return self._hand(new[0]) if n is None else [self._hand(t) for t in new]

    def _store_new(self, trials: Sequence[Any]) -> None:
        """``_trial_repo.store_new_trial``: what ``_sample_trial`` asked for, with its state."""
        batch = [self._in(t) for t in trials]
        stash = self._stash
        if (
            stash is not None
            and self._optimizer_lock.held
            and stash.ids == tuple(t.id for t in batch)
        ):
            self._store_sampled(batch, stash.state_bytes)
            return
        with self._trials():
            self._repo.store_new_trial(batch)

    # -- claiming and reporting ---------------------------------------------------

    def lock_and_claim_next_pending_trial(self, worker_id: str) -> Trial | None:
        """Take the earliest pending trial and mark it evaluating, in one critical section."""
        self._ensure_checked()
        repo = self._repo
        if repo.peek() and not repo.view.count(State.PENDING) and not self._any_dead():
            # Nothing pending among the committed trials at this instant, and no
            # trial of a dead worker to take back: a correct answer without the lock
            # (the busy path of every idle worker).
            return None
        with self._trials():
            self._repo.sync()
            release_dead(self._repo, self.settings.dead_worker_trials)
            pending = self._repo.view.earliest_pending(1)
            if not pending:
                return None
            trial = pending[0].clone()
            trial.set_evaluating(time_started=time.time(), worker_id=worker_id)
            self._repo.update_trial(trial, hints="metadata")
            return self._hand(trial)

    def _any_dead(self) -> bool:
        """Whether an evaluating trial of the view was claimed by a process now dead."""
        if self.settings.dead_worker_trials == "keep":
            return False
        view = self._repo.view
        configs = self._repo.directory
        return any(
            is_dead(configs, tid, view[tid].metadata.time_started)
            for tid in view.ids_in(State.EVALUATING)
        )

    def lock_and_release_dead_workers_trials(self) -> list[str]:
        """Return the evaluating trials of provably dead worker processes now; their ids.

        Each becomes pending (or crashed, per ``Settings.dead_worker_trials``) in one
        journaled commit. Claims do this first on their own (``neps_state._owners``).
        """
        self._ensure_checked()
        with self._trials():
            return release_dead(self._repo, self.settings.dead_worker_trials)

    def lock_and_report_trial_evaluation(
        self, trial: Trial, report: Report, *, worker_id: str
    ) -> None:
        """Attach ``report`` to the evaluating ``trial``; an error is also added to the dump."""
        self._ensure_checked()
        trial.report = report
        new, error = self._reported(trial, report, worker_id)
        hints: tuple[TrialWriteHint, ...] = ("report", "metadata")
        # Written now, outside the lock; under it only renamed.
        prepared = self._repo.prepare_update(new, hints)
        try:
            with self._trials():
                self._commit_report(new, error, worker_id, prepared)
        finally:
            prepared.discard()

    def _report_trial_evaluation(self, trial: Trial, report: Report, *, worker_id: str) -> None:
        """NePS's runtime's report: as ``lock_and_report_trial_evaluation``, its lock held."""
        self._ensure_checked()
        trial.report = report
        new, error = self._reported(trial, report, worker_id)
        with self._trials():
            self._commit_report(new, error, worker_id, None)

    def _reported(
        self, trial: Any, report: Any, worker_id: str
    ) -> tuple[Trial, SerializableTrialError | None]:
        """The trial as it is to be stored, and its error record (if it failed)."""
        new = self._in(trial).clone()
        reported = State(report.reported_as)
        if new.metadata.state is State.EVALUATING:
            new.metadata.state = reported
        elif new.metadata.state is not reported:
            raise IllegalTransitionError(
                new.id,
                new.metadata.state.value,
                reported.value,
                "the trial object given is not evaluating",
            )
        err = None if new.report is None else new.report.err
        if err is None:
            return new, None
        return new, SerializableTrialError(
            trial_id=new.id,
            worker_id=str(worker_id),
            err_type=type(err).__name__,
            err=str(err),
            tb=None if new.report is None else new.report.tb,
        )

    def _commit_report(
        self,
        new: Trial,
        error: SerializableTrialError | None,
        worker_id: str,
        prepared: PreparedUpdate | None,
    ) -> None:
        """Commit a report (trial lock held): only of a trial evaluating, by its worker."""
        self._repo.sync()
        current = self._repo.view.get(new.id)
        reported = new.metadata.state
        if current is not None and current.metadata.state is not State.EVALUATING:
            # Reported trials must come from evaluating: no double reports.
            raise IllegalTransitionError(
                new.id,
                current.metadata.state.value,
                reported.value,
                "it is not being evaluated",
            )
        owner = None if current is None else current.metadata.evaluating_worker_id
        if owner is not None and owner != str(worker_id):
            # The same refusal as put_updated_trial's takeover of a claim.
            raise IllegalTransitionError(
                new.id,
                State.EVALUATING.value,
                reported.value,
                f"already evaluated by worker {owner!r}, not {str(worker_id)!r}",
            )
        hints: tuple[TrialWriteHint, ...] = ("report", "metadata")
        self._repo.update_trial(new, hints=hints, error=error, prepared=prepared)

    def put_updated_trial(
        self, trial: Trial, *, hints: list[TrialWriteHint] | TrialWriteHint | None = None
    ) -> None:
        """Store a new version of an existing trial (only legal state changes)."""
        self._ensure_checked()
        with self._trials():
            self._repo.update_trial(self._in(trial), hints=hints)

    # -- imports, resets and removals ----------------------------------------------

    def lock_and_import_trials(
        self, imported_configs: Sequence[Any], *, worker_id: str
    ) -> list[Trial]:
        """Store evaluated configs from elsewhere (NePS's ``ImportedConfig``s), in one commit.

        They are ``EXTERNAL`` trials with their reports; an id that exists raises
        ``TrialAlreadyExistsError`` and stores none of them.
        """
        self._ensure_checked()
        trials = Trial.load_from_dict(
            imported_configs, worker_id=worker_id, trial_directory=self._repo.directory
        )
        with self._optimizer_lock.lock(), self._trials():
            self._repo.store_new_trial(trials)
        for trial in trials:
            assert trial.report is not None  # noqa: S101 - load_from_dict sets every report
            logger.info(
                "Imported trial %s with result: %s.", trial.id, trial.report.objective_to_minimize
            )
        return [self._hand(t) for t in trials]

    def lock_and_reset_trial_by_id(self, trial_id: str) -> None:
        """Make a trial pending again, its report and its error records removed.

        What ``neps.clean`` does to failed trials so that a resumed run evaluates them
        again. ``TrialNotFoundError`` if there is no such trial.
        """
        self._ensure_checked()
        validate_trial_id(trial_id)
        with self._trials():
            self._repo.clean_trial(trial_id, remove=False)

    def lock_and_remove_trial_by_id(self, trial_id: str) -> None:
        """Remove a trial, its folder and its error records, in one commit."""
        self._ensure_checked()
        validate_trial_id(trial_id)
        with self._trials():
            self._repo.clean_trial(trial_id, remove=True)

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
            self._repo.sync()
            return list(self._repo.view)

    def lock_and_get_trial_by_id(self, trial_id: str) -> Trial:
        """One trial; ``TrialNotFoundError`` if there is none with this id."""
        self._ensure_checked()
        validate_trial_id(trial_id)
        self._sync_view()
        trial = self._repo.view.get(trial_id)
        if trial is None:
            raise TrialNotFoundError(trial_id, self._repo.directory / f"config_{trial_id}")
        return self._out(trial)

    def unsafe_retry_get_trial_by_id(self, trial_id: str) -> Trial:
        """Read one trial from its folder without the lock, retrying a failed read.

        A file that stays unreadable is a ``CorruptedFileError`` naming it.
        """
        self._ensure_checked()
        for attempt in range(N_UNSAFE_RETRIES):
            try:
                return self._hand(read_trial(self._repo.directory, trial_id))
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
            self._repo.sync()
            pending = [
                self._out(t) for t in self._repo.view.earliest_pending(1 if n is None else n)
            ]
        if n is None:
            return pending[0] if pending else None
        return pending

    def lock_and_get_current_evaluating_trials(self) -> list[Trial]:
        """Every trial being evaluated."""
        self._ensure_checked()
        with self._trials():
            self._repo.sync()
            view = self._repo.view
            return [self._out(view[tid]) for tid in view.ids_in(State.EVALUATING)]

    def lock_and_get_errors(self) -> ErrDump:
        """Every error record of the run."""
        self._ensure_checked()
        with self._err_lock.lock():
            return self._errors.read()

    def lock_and_consolidate_cache(self) -> None:
        """Rewrite the trial cache as one snapshot now."""
        self._ensure_checked()
        with self._trials():
            self._repo.consolidate()

    def _valid_evaluated(self) -> dict[str, Any]:
        """``_trial_repo.get_valid_evaluated_trials``: trials with a usable objective."""
        with self._trials():
            self._repo.sync()
            return self._out_all(valid_evaluated(self._repo.view), complete=False)
