"""``TrialRepo``: the trial folders plus the journal that caches them.

Durability: the journal is the durable record. With ``fsync`` durability its
append is fsynced before an operation returns; trial folders are written
atomically (readers never see a part) but not fsynced, since every byte of them
can be regenerated from the journal (``repair``) should the machine lose power.
A process crash loses nothing either way: the page cache survives it.

Commit protocol of every change (the caller holds the trial lock):

1. refresh the view from the journal, recovering first if a writer died;
2. serialize everything (a bad value fails here, before any change);
3. record the intent (which trials, from which journal position);
4. write the trial files (a new trial: a hidden staging folder renamed into place);
5. append one journal record: the commit point;
6. clear the intent; maybe consolidate.

A crash before 5 is rolled back by the next lock holder (files rewritten from the
journal, uncommitted folders removed); a crash after 5 is rolled forward.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import secrets
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from neps_state._errdump import ErrorLog, SerializableTrialError
from neps_state._errors import CorruptedFileError, TrialAlreadyExistsError, TrialNotFoundError
from neps_state._index import TrialIndex
from neps_state._intent import UNREADABLE, Intent, IntentFile
from neps_state._io import (
    TMP_INFIX,
    create_file,
    fault_point,
    remove_tree,
    save_aside,
    tmp_sibling,
    write_atomic,
)
from neps_state._journal import ForeignCacheError, Journal, ReadResult
from neps_state._settings import Settings
from neps_state._spare import SpareFolder, sweep
from neps_state._trial import MetaData, Report, State, Trial, check_transition, to_plain
from neps_state._trialfiles import (
    ALL_FILES,
    CONFIG_FILE,
    METADATA_FILE,
    TrialWriteHint,
    changed_files,
    list_trial_ids,
    normalize_hints,
    read_trial,
    render,
    trial_dir,
)

logger = logging.getLogger(__name__)

_STAGING = ".staging-"
_TRASH = ".trash-"


def _pickle(trials: list[Trial]) -> bytes:
    return pickle.dumps(trials, protocol=pickle.HIGHEST_PROTOCOL)


def _own_copy(trial: Trial) -> Trial:
    """A deep-enough copy in plain types, so callers can't mutate what we store."""
    if not isinstance(trial.metadata.state, State):
        raise TypeError(f"Trial {trial.id!r}: metadata.state must be a Trial.State")
    report = trial.report
    if report is not None:
        report = Report(**{**report.__dict__, **to_plain({"extra": report.extra})})
    return Trial(
        config=to_plain(trial.config),
        metadata=MetaData(**trial.metadata.__dict__),
        report=report,
        source=trial.source,
    )


@dataclass
class PreparedUpdate:
    """Files of an update written ahead of the lock (see :meth:`TrialRepo.prepare_update`)."""

    trial: Trial
    files: dict[str, bytes | None]
    temps: dict[str, Path] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the temp files the update did not use."""
        for tmp in self.temps.values():
            tmp.unlink(missing_ok=True)
        self.temps.clear()


class TrialRepo:
    """The trials of one run directory's ``configs/`` folder.

    Does no locking: every method expects the caller to hold the trial lock
    (``NePSState`` does). The in-memory view is refreshed incrementally. With
    ``sync_on_commit=False`` the caller calls :meth:`flush` itself, after releasing
    the lock and before acknowledging the operation (``NePSState`` does).
    """

    CACHE_FILE_NAME: ClassVar[str] = ".trial_cache.pkl"
    INTENT_FILE_NAME: ClassVar[str] = ".trial_cache.intent"

    def __init__(
        self,
        directory: Path,
        *,
        settings: Settings | None = None,
        errors: ErrorLog | None = None,
        sync_on_commit: bool = True,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.settings = Settings.from_env() if settings is None else settings
        self.errors = errors
        self.sync_on_commit = sync_on_commit
        self.cache_path = self.directory / self.CACHE_FILE_NAME
        self._journal = Journal(self.cache_path, fsync=self.settings.fsync)
        self._intent = IntentFile(self.directory / self.INTENT_FILE_NAME)
        self._index = TrialIndex()
        self._spare = SpareFolder(self.directory, (CONFIG_FILE, METADATA_FILE))

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the location travels; the new process opens its own descriptors.
        return (
            _reopen,
            (type(self), self.directory, self.settings, self.errors, self.sync_on_commit),
        )

    # -- reading --------------------------------------------------------------

    @property
    def view(self) -> TrialIndex:
        """The live view as of the last sync. Read-only: never mutate its trials."""
        return self._index

    def latest(self) -> dict[str, Trial]:
        """Every trial, as copies the caller may keep and mutate."""
        self.sync()
        return {tid: t.clone() for tid, t in self._index.items()}

    def list_trial_ids(self) -> list[str]:
        """The ids of the trial folders on disk."""
        return list_trial_ids(self.directory)

    def load_trial_from_disk(self, trial_id: str) -> Trial:
        """Read a trial from its folder (not from the cache)."""
        return read_trial(self.directory, trial_id)

    def peek(self) -> bool:
        """Read newly committed records without the lock; False if only ``sync`` can.

        Safe without the lock because the journal only ever grows by whole, checksummed
        records (a record being appended is not read yet) or is replaced whole, and
        holds only committed operations (a writer that died mid-operation committed
        nothing, or all of it). It never repairs or rebuilds: when that is needed,
        it returns False.
        """
        try:
            result = self._journal.refresh()
        except ForeignCacheError:
            return False
        if result is None:
            return False
        self._absorb(result)
        return True

    def flush(self) -> None:
        """Make this handle's commits durable (fsync durability); see ``sync_on_commit``."""
        self._journal.flush()

    def sync(self) -> None:
        """Bring the view up to date; first recover from a writer that died."""
        intent = self._intent.read()
        if intent is None:
            self._refresh(recovering=False)
        else:
            self._recover(intent)

    def _refresh(self, *, recovering: bool) -> None:
        try:
            result = self._journal.refresh()
        except ForeignCacheError:
            self._rebuild("it is not a neps_state journal", keep_old=True)
            return
        if result is None:
            self._rebuild("it is missing")
            return
        self._absorb(result)
        if result.bad_tail:
            aside = save_aside(self.cache_path, "torn", result.bad_tail, fsync=self.settings.fsync)
            self._journal.truncate_tail()
            logger.warning(
                "%s ended in %d bytes that are not a complete record; moved them to %s",
                self.cache_path,
                len(result.bad_tail),
                aside,
            )
            if not recovering:
                # No writer died, so the damage is unexplained: trust the folders.
                self._rebuild("its tail was damaged")

    def _absorb(self, result: ReadResult) -> None:
        if result.reset:
            self._index.clear()
        for payload in result.payloads:
            self._apply(payload)

    def _apply(self, payload: bytes) -> None:
        try:
            trials = pickle.loads(payload)  # noqa: S301 - written by this module
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same
            raise CorruptedFileError(
                self.cache_path, f"a record does not unpickle: {e!r}"
            ) from None
        if not isinstance(trials, list) or not all(isinstance(t, Trial) for t in trials):
            raise CorruptedFileError(self.cache_path, "a record is not a list of trials")
        for trial in trials:
            self._index.put(trial)

    def _rebuild(self, reason: str, *, keep_old: bool = False) -> None:
        trials = [read_trial(self.directory, tid) for tid in list_trial_ids(self.directory)]
        trials.sort(key=lambda t: (t.metadata.time_sampled, t.id))
        if keep_old:
            old = self.cache_path.with_name(f"{self.CACHE_FILE_NAME}.old-{secrets.token_hex(4)}")
            os.replace(self.cache_path, old)
            logger.warning("%s: %s; kept it as %s", self.cache_path, reason, old)
        if trials:
            logger.warning(
                "Rebuilding %s from %d trial folders: %s", self.cache_path, len(trials), reason
            )
        self._journal.rewrite([_pickle(trials)] if trials else [])
        self._index.clear()
        for trial in trials:
            self._index.put(trial)

    # -- recovery ---------------------------------------------------------------

    def _recover(self, intent: Intent) -> None:
        logger.warning(
            "A writer (pid %d, %s of %s) died holding the trial lock in %s; recovering",
            intent.pid,
            intent.op,
            ", ".join(intent.ids) or "?",
            self.directory,
        )
        if intent is UNREADABLE:
            self._rebuild("the in-flight marker is unreadable")
        else:
            self._refresh(recovering=True)
            for tid in intent.ids:
                trial = self._index.get(tid)
                if trial is None:
                    remove_tree(trial_dir(self.directory, tid))
                else:
                    self._restore(trial)
            committed = self._journal.token == intent.token and self._journal.offset > intent.offset
            if committed and intent.error_line is not None and intent.errors_size is not None:
                if self.errors is None:
                    logger.warning("No error log attached; cannot finish the error record")
                else:
                    with self.errors.lock.lock():
                        self.errors.ensure_appended(intent.errors_size, intent.error_line)
        for entry in self.directory.iterdir():
            if entry.name.startswith((_STAGING, _TRASH)):
                remove_tree(entry)
        sweep(self.directory)
        self._intent.clear()

    def _restore(self, trial: Trial) -> None:
        """Make a trial's folder match the view again."""
        path = trial_dir(self.directory, trial.id)
        files = render(trial, path, ALL_FILES)
        if not path.is_dir():
            self._place(self._stage(files), path)
            return
        for entry in path.iterdir():
            if TMP_INFIX in entry.name:
                entry.unlink(missing_ok=True)
        self._write_files(path, files)

    # -- writing ----------------------------------------------------------------

    def store_new_trial(self, trial: Trial | Iterable[Trial]) -> None:
        """Add new trials (all or none); an id that exists raises ``TrialAlreadyExistsError``."""
        batch = [trial] if isinstance(trial, Trial) else list(trial)
        if not batch:
            return
        self.sync()
        prepared: list[tuple[Trial, Path, dict[str, bytes | None]]] = []
        seen: set[str] = set()
        for item in batch:
            path = trial_dir(self.directory, item.id)
            if item.id in seen or item.id in self._index or os.path.lexists(path):
                raise TrialAlreadyExistsError(item.id, path)
            seen.add(item.id)
            new = _own_copy(item)
            _check_consistent(new)
            prepared.append((new, path, render(new, path, ALL_FILES)))
        payload = _pickle([p[0] for p in prepared])
        intent = self._begin("store", tuple(seen))
        try:
            staged = [(self._fill_spare(files), path, files) for _, path, files in prepared]
            fault_point("store.staged")
            for staging, path, files in staged:
                try:
                    self._place(staging, path)
                except FileNotFoundError:
                    # The spare was swept by mistake (see _spare): write the folder anew.
                    self._place(self._stage(files), path)
            fault_point("store.dir_renamed")
            self._journal.append(payload)
            fault_point("store.committed")
        except BaseException:
            self._recover(intent)
            raise
        self._intent.clear()
        for new, _, _ in prepared:
            self._index.put(new)
        self._maybe_consolidate()
        if self.sync_on_commit:
            self.flush()

    def update_trial(
        self,
        trial: Trial,
        *,
        hints: Iterable[TrialWriteHint] | TrialWriteHint | None = ("report", "metadata"),
        error: SerializableTrialError | None = None,
        prepared: PreparedUpdate | None = None,
    ) -> None:
        """Replace a trial with a new version of it.

        The hinted files are rewritten, and any file whose content changed, so the
        folder always matches the cache. ``error`` is appended to the error dump
        as part of the same commit. ``prepared`` (from :meth:`prepare_update` for
        this trial) supplies files already written; its copy of the trial is stored.
        """
        names = normalize_hints(hints)
        self.sync()
        path = trial_dir(self.directory, trial.id)
        old = self._index.get(trial.id)
        if old is None:
            raise TrialNotFoundError(trial.id, path)
        if prepared is not None and prepared.trial.id != trial.id:
            raise ValueError(f"prepared for trial {prepared.trial.id!r}, not {trial.id!r}")
        new = _own_copy(trial) if prepared is None else prepared.trial
        check_transition(old, new)
        if not path.is_dir():
            raise CorruptedFileError(path, "the trial folder is missing")
        ready = {} if prepared is None else prepared.files
        files = render(new, path, [f for f in (*names, *changed_files(old, new)) if f not in ready])
        files.update(ready)
        temps = {} if prepared is None else prepared.temps
        payload = _pickle([new])
        line = None if error is None else error.to_line()
        if line is not None and self.errors is None:
            raise ValueError("this TrialRepo has no error log to record the error in")
        errors = self.errors if line is not None else None
        with errors.lock.lock() if errors is not None else contextlib.nullcontext():
            size = None if errors is None else errors.size()
            intent = self._begin("update", (new.id,), errors_size=size, error_line=line)
            try:
                self._write_files(path, files, temps)
                fault_point("update.files_written")
                self._journal.append(payload)
                fault_point("update.committed")
                if errors is not None and line is not None:
                    errors.append(line)
                    fault_point("report.error_appended")
            except BaseException:
                self._recover(intent)
                raise
            self._intent.clear()
        self._index.put(new)
        self._maybe_consolidate()
        if self.sync_on_commit:
            self.flush()

    def consolidate(self) -> None:
        """Rewrite the journal as one snapshot record (atomically: old or new, never broken)."""
        self.sync()
        trials = list(self._index.values())
        self._journal.rewrite([_pickle(trials)] if trials else [])
        logger.debug("Consolidated %s: %d trials", self.cache_path, len(trials))
        # As costly as the rewrite (one pass over the folder), and as rare.
        sweep(self.directory)

    def _maybe_consolidate(self) -> None:
        s = self.settings
        if self._journal.records > max(
            s.consolidation_limit, s.consolidation_ratio * len(self._index)
        ):
            self.consolidate()

    def _begin(self, op: str, ids: tuple[str, ...], **extra: Any) -> Intent:
        intent = Intent(
            op=op,
            pid=os.getpid(),
            token=self._journal.token,
            offset=self._journal.offset,
            ids=ids,
            **extra,
        )
        self._intent.begin(intent)
        return intent

    def _stage(self, files: dict[str, bytes | None]) -> Path:
        staging = self.directory / f"{_STAGING}{secrets.token_hex(6)}"
        os.mkdir(staging)
        for name, data in files.items():
            if data is not None:
                create_file(staging / name, data)
        return staging

    def _fill_spare(self, files: dict[str, bytes | None]) -> Path:
        spare = self._spare.fill(files)
        return self._stage(files) if spare is None else spare

    def _place(self, staging: Path, path: Path) -> None:
        os.rename(staging, path)

    def _write_files(
        self, path: Path, files: dict[str, bytes | None], temps: dict[str, Path] | None = None
    ) -> None:
        for name, data in files.items():
            tmp = None if temps is None else temps.pop(name, None)
            if data is None:
                (path / name).unlink(missing_ok=True)
                continue
            if tmp is not None:
                try:
                    os.replace(tmp, path / name)
                    continue
                except FileNotFoundError:
                    logger.debug("%s vanished (a recovery cleaned the folder); rewriting", tmp)
            write_atomic(path / name, data, fsync=False)

    # -- work done before the lock ------------------------------------------------

    def store_ahead(self) -> AbstractContextManager[None]:
        """Enter before taking the lock: creates the folder a new trial will be written into.

        Optional: :meth:`store_new_trial` creates its folder itself otherwise. Creating
        files is the costly part of a store on some file systems (see ``_spare``).
        An unused folder is removed at exit.
        """
        return self._spare.ahead()

    def prepare_update(
        self, trial: Trial, hints: Iterable[TrialWriteHint] | TrialWriteHint | None
    ) -> PreparedUpdate:
        """Write, before the lock, the hinted files of the next version of ``trial``.

        Pass the result to :meth:`update_trial` (which then only renames them) and
        call its ``discard`` afterwards, whatever happened.
        """
        new = _own_copy(trial)
        path = trial_dir(self.directory, new.id)
        prepared = PreparedUpdate(new, render(new, path, normalize_hints(hints)))
        try:
            for name, data in prepared.files.items():
                if data is not None:
                    tmp = tmp_sibling(path / name)
                    create_file(tmp, data, replacing=True)
                    prepared.temps[name] = tmp
        except FileNotFoundError:
            # No folder (yet): the update writes what it needs, or reports the problem.
            prepared.discard()
        except BaseException:
            prepared.discard()
            raise
        return prepared


def _check_consistent(trial: Trial) -> None:
    state = trial.metadata.state
    if state.is_finished and trial.report is None:
        raise ValueError(f"Trial {trial.id!r} is {state.value} but has no report")
    if state is State.PENDING and trial.report is not None:
        raise ValueError(f"Trial {trial.id!r} is pending but has a report")


def _reopen(
    cls: type[TrialRepo],
    directory: Path,
    settings: Settings,
    errors: ErrorLog | None,
    sync_on_commit: bool,
) -> TrialRepo:
    return cls(directory, settings=settings, errors=errors, sync_on_commit=sync_on_commit)
