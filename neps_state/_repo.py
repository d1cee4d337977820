"""``TrialRepo``: the trial folders plus the journal that caches them.

Durability: the journal is the durable record. With ``fsync`` durability its
append is fsynced before an operation returns; trial folders are written
atomically (readers never see a part) but not fsynced, since every byte of them
can be regenerated from the journal should the machine lose power
(:meth:`TrialRepo.recover`, run by ``NePSState`` after a reboot). A process
crash loses nothing either way: the page cache survives it.

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
import hashlib
import logging
import os
import pickle
import re
import secrets
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from neps_state._errdump import ErrorLog, SerializableTrialError
from neps_state._errors import (
    CorruptedFileError,
    ForeignCacheError,
    IllegalTransitionError,
    InvalidTrialIdError,
    TrialAlreadyExistsError,
    TrialNotFoundError,
    UsageError,
)
from neps_state._index import TrialIndex
from neps_state._intent import UNREADABLE, Intent, IntentFile
from neps_state._io import (
    TMP_INFIX,
    create_file,
    fault_point,
    fsync_dir,
    is_real_dir,
    load_pickle,
    mkdir,
    read_file,
    remove_tree,
    rename,
    save_aside,
    unlink,
    write_atomic,
)
from neps_state._journal import HEADER_SIZE, MAGIC, Journal, ReadResult
from neps_state._optimizer import adopt_state, state_file_bytes
from neps_state._owners import mark_claims
from neps_state._proc import gc_paused, pid, unique
from neps_state._records import Record, decode, encode
from neps_state._settings import Settings
from neps_state._spare import SpareFolder, hold_file, sweep
from neps_state._trial import (
    MetaData,
    Report,
    State,
    Trial,
    check_transition,
    to_plain,
    validate_trial_id,
)
from neps_state._trialfiles import (
    ALL_FILES,
    CONFIG_FILE,
    METADATA_FILE,
    PREFIX,
    PREVIOUS_FILE,
    TrialWriteHint,
    changed_files,
    list_trial_ids,
    normalize_hints,
    read_trial,
    render,
    trial_dir,
)

logger = logging.getLogger(__name__)

SCRATCH = ".scratch"
"""``configs/.scratch/``: where files are made before they are moved into a trial's folder."""
_STAGING = ".staging-"
_TRASH = ".trash-"
_UNSEEN = object()
_CLEANED_ERRORS = ".shared_errors.cleaned"
"""``configs/.shared_errors.cleaned``: the error dump without a cleaned trial's records."""
_DAMAGED = ".damaged-"
_TAIL_MIN_BYTES = 8 << 20
_TAIL_RATIO = 2
"""A journal is also rewritten once the records after its snapshot outgrow both
8 MiB and twice the snapshot: a sample's record carries the optimizer state
(~6 kB), so records are larger than the trials they hold; rewrites stay amortized."""


@dataclass(frozen=True)
class Repair:
    """One change a recovery made (or, in a dry run, would make) to a file of the run."""

    path: Path
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.action}"


def summarize(repairs: list[Repair], root: Path) -> str:
    """One line for many repairs: each kind of change once, with its number of files."""
    kinds: dict[str, list[Repair]] = {}
    for repair in repairs:
        kinds.setdefault(re.sub(r" to \S+$", "", repair.action.split(":")[0]), []).append(repair)
    parts = []
    for kind, group in kinds.items():
        if len(group) == 1:
            [one] = group
            where = one.path.relative_to(root) if one.path.is_relative_to(root) else one.path
            parts.append(f"{where}: {one.action}")
        else:
            parts.append(f"{len(group)} files {kind}")
    return "; ".join(parts)


def _own_copy(trial: Trial) -> Trial:
    """A deep-enough copy in plain types, so callers can't mutate what we store."""
    if not isinstance(trial.metadata.state, State):
        raise UsageError(
            f"Trial {trial.id!r}: metadata.state must be a Trial.State,"
            f" not {trial.metadata.state!r}"
        )
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
    fds: list[int] = field(default_factory=list)

    def discard(self) -> None:
        """Remove the temp files the update did not use; release the rest."""
        for tmp in self.temps.values():
            unlink(tmp)
        self.temps.clear()
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class TrialRepo:
    """The trials of one run directory's ``configs/`` folder.

    Does no locking: every method expects the caller to hold the trial lock
    (``NePSState`` does). The in-memory view is refreshed incrementally. With
    ``sync_on_commit=False`` the caller calls :meth:`flush` itself, after releasing
    the lock and before acknowledging the operation (``NePSState`` does).
    """

    CACHE_FILE_NAME: ClassVar[str] = ".trial_cache.journal"
    LEGACY_CACHE_FILE_NAME: ClassVar[str] = ".trial_cache.pkl"
    """NePS's own cache; also this journal's name before it had its own (moved on open)."""
    INTENT_FILE_NAME: ClassVar[str] = ".trial_cache.intent"

    def __init__(
        self,
        directory: Path,
        *,
        settings: Settings | None = None,
        errors: ErrorLog | None = None,
        sync_on_commit: bool = True,
        state_file: Path | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.settings = Settings.from_env() if settings is None else settings
        self.errors = errors
        self.sync_on_commit = sync_on_commit
        self.state_file = state_file
        self.cache_path = self.directory / self.CACHE_FILE_NAME
        self._journal = Journal(self.cache_path, fsync=self.settings.fsync)
        self._intent = IntentFile(self.directory / self.INTENT_FILE_NAME)
        self._index = TrialIndex()
        self.scratch = self.directory / SCRATCH
        self._spare = SpareFolder(self.scratch, (CONFIG_FILE, METADATA_FILE))
        self._optimizer_state: bytes | None = None
        self._errors_base: int | None = None
        self._errors_digest: str | None = None
        self._errors_journaled: list[tuple[int, bytes]] = []
        self._holding = self._synced_in_hold = False
        self._native_seen: tuple[int, int, int] | object | None = _UNSEEN

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the location travels; the new process opens its own descriptors.
        options = {
            "settings": self.settings,
            "errors": self.errors,
            "sync_on_commit": self.sync_on_commit,
            "state_file": self.state_file,
        }
        return (_reopen, (type(self), self.directory, options))

    # -- reading --------------------------------------------------------------

    @property
    def view(self) -> TrialIndex:
        """The live view as of the last sync. Read-only: never mutate its trials."""
        return self._index

    @property
    def optimizer_state(self) -> bytes | None:
        """The newest optimizer state in the journal (a pickle) as of the last sync, if any."""
        return self._optimizer_state

    def latest(self) -> dict[str, Trial]:
        """Every trial, as copies the caller may keep and mutate."""
        self.sync()
        with gc_paused():
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
        """Make this handle's commits durable (fsync durability); see ``sync_on_commit``.

        The journal first, then the error lines appended with its records.
        """
        self._journal.flush()
        if self.errors is not None:
            self.errors.flush()

    def sync(self) -> None:
        """Bring the view up to date; first recover from a writer that died."""
        if self._synced_in_hold:
            return
        self._check_no_native_writer()
        intent = self._intent.read()
        if intent is None:
            self._refresh(recovering=False)
        else:
            self._recover(intent)
        self._synced_in_hold = self._holding

    def _native_cache(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.directory / self.LEGACY_CACHE_FILE_NAME)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _check_no_native_writer(self) -> None:
        """Refuse to go on if NePS's own state wrote its cache since this handle opened.

        NePS's state (in a worker that did not call ``neps_state.patch_neps()``) keeps
        ``.trial_cache.pkl``, not this journal, and takes other locks (``lockf``):
        what it writes is not in the journal, and would be silently lost or misread.
        """
        now = self._native_cache()
        if self._native_seen is _UNSEEN:
            self._native_seen = now
        elif now != self._native_seen:
            raise CorruptedFileError(
                self.directory / self.LEGACY_CACHE_FILE_NAME,
                "was written by NePS's own state since neps_state took this run over: a"
                " NePS worker that did not call neps_state.patch_neps() runs on this"
                " directory. Stop it (every worker must call patch_neps()); what it wrote"
                " is not in the journal",
            )

    def begin_hold(self) -> None:
        """Call once the trial lock is taken (:meth:`end_hold` before it is released).

        Nobody else can append meanwhile, so the first :meth:`sync` inside serves
        every later one (an operation checks and then commits: one read, not two).
        """
        self._holding, self._synced_in_hold = True, False

    def end_hold(self) -> None:
        """Call before the trial lock is released."""
        self._holding = self._synced_in_hold = False

    def _refresh(self, *, recovering: bool) -> None:
        try:
            result = self._journal.refresh()
        except ForeignCacheError:
            self._rebuild("it is not a neps_state journal", keep_old=True)
            return
        if result is None:
            if self._adopt_legacy():
                self._refresh(recovering=recovering)
            else:
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

    def _adopt_legacy(self) -> bool:
        """Give a journal found under NePS's cache name its own name; True if there was one.

        Journals were written as ``.trial_cache.pkl`` before, where NePS's own readers
        fail on them. NePS's cache there is left alone (the folders are read instead).
        """
        legacy = self.directory / self.LEGACY_CACHE_FILE_NAME
        try:
            with legacy.open("rb") as f:
                ours = f.read(len(MAGIC)) == MAGIC
        except OSError:
            return False
        if not ours:
            return False
        rename(legacy, self.cache_path)
        fsync_dir(self.directory)
        self._native_seen = None
        logger.info("Moved the journal %s to %s", legacy, self.cache_path)
        return True

    def _absorb(self, result: ReadResult) -> None:
        # Every record is decoded before any is applied: a bad one changes nothing
        # and stays unread, so every later read raises too (and nothing is
        # committed behind it), as a new handle's would.
        if not result.payloads and not result.reset:
            return  # nothing new (most lock-free peeks): no pause to set up
        with gc_paused():
            try:
                records = [decode(payload, self.cache_path) for payload in result.payloads]
            except CorruptedFileError:
                self._journal.unread(result)
                raise
            if result.reset:
                self._index.clear()
                self._optimizer_state = self._errors_base = self._errors_digest = None
                self._errors_journaled = []
            for record in records:
                self._apply(record)

    def _apply(self, record: Record) -> None:
        for trial in record.trials:
            self._index.put(trial)
        if record.optimizer_state is not None:
            self._optimizer_state = record.optimizer_state
        if record.error is not None:
            self._errors_journaled.append(record.error)
        if record.errors_size is not None:
            self._errors_base = record.errors_size
            self._errors_digest = record.errors_digest

    def _rebuild(self, reason: str, *, keep_old: bool = False) -> None:
        trials = [read_trial(self.directory, tid) for tid in list_trial_ids(self.directory)]
        trials.sort(key=lambda t: (t.metadata.time_sampled, t.id))
        if keep_old:
            old = self.cache_path.with_name(f"{self.CACHE_FILE_NAME}.old-{secrets.token_hex(4)}")
            rename(self.cache_path, old)
            logger.warning("%s: %s; kept it as %s", self.cache_path, reason, old)
        if trials:
            logger.warning(
                "Rebuilding %s from %d trial folders: %s", self.cache_path, len(trials), reason
            )
        state = self._state_from_file()
        self._rewrite(Record(trials, state, errors_size=self._errors_now()))
        if state is not None and self.state_file is not None:
            # Taken over: NePS's own state (unpatched) now refuses this run (see
            # kept_by_neps_state) instead of writing where this journal never looks.
            write_atomic(self.state_file, state_file_bytes(state), fsync=True)

    def _errors_now(self) -> int | None:
        """The error dump's size, made durable: a new journal's baseline for the dump."""
        if self.errors is None:
            return None
        with self.errors.lock.lock():
            return self.errors.make_durable()

    def _state_from_file(self) -> bytes | None:
        """The optimizer state file's bytes, to start a new journal with; None if unusable."""
        if self.state_file is None:
            return None
        try:
            obj = load_pickle(self.state_file, allow=self.settings.pickle_allow)
        except CorruptedFileError:
            return None
        # Pickled again: the file wraps the state (see kept_by_neps_state), or holds
        # NePS's class, and the journal keeps this package's, bare.
        adopted = adopt_state(obj)
        return None if adopted is None else pickle.dumps(adopted, pickle.HIGHEST_PROTOCOL)

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
            # Which trials it touched is unknown: check them all against the journal,
            # which holds every commit (error lines included), as after a power loss.
            self.recover()
        else:
            self._refresh(recovering=True)
            for tid in intent.ids:
                trial = self._index.get(tid)
                if trial is None:
                    remove_tree(trial_dir(self.directory, tid))
                else:
                    self._restore(trial)
            if intent.op in ("remove", "reset_by_id") and self.errors is not None:
                with self.errors.lock.lock():
                    self._finish_clean()
            committed = self._journal.token == intent.token and self._journal.offset > intent.offset
            if committed and intent.error_line is not None and intent.errors_size is not None:
                if self.errors is None:
                    logger.warning("No error log attached; cannot finish the error record")
                else:
                    with self.errors.lock.lock():
                        self.errors.ensure_appended(intent.errors_size, intent.error_line)
        self._clean_leftovers()
        self._intent.clear()

    def _clean_leftovers(self) -> None:
        """Remove what writers that died left in configs/ and its scratch folder (lock held)."""
        for folder in (self.directory, self.scratch):
            with contextlib.suppress(FileNotFoundError):
                for entry in folder.iterdir():
                    if _leftover(entry.name):
                        remove_tree(entry)
            sweep(folder)

    def _restore(self, trial: Trial) -> None:
        """Make a trial's folder match the view again."""
        path = trial_dir(self.directory, trial.id)
        files = render(trial, path, ALL_FILES)
        if os.path.lexists(path) and not is_real_dir(path):
            raise CorruptedFileError(path, "is not a folder (a symbolic link is not followed)")
        if not is_real_dir(path):
            self._place(self._stage(files), path)
            return
        for entry in path.iterdir():
            if TMP_INFIX in entry.name:
                unlink(entry)
        self._write_files(path, files)

    # -- recovery after a power loss ----------------------------------------------

    def recover(self, *, dry_run: bool = False, salvage: bool = False) -> list[Repair]:
        """Make ``configs/`` and the error dump match the journal again (trial lock held).

        What a power loss leaves: the journal's appends are fsynced (``fsync``
        durability), trial folders and the error dump's last lines may not be, so a
        folder may be empty, zero-filled, stale or missing, and the journal may end
        in a torn record that was never acknowledged. Every folder is compared with
        the journal and rewritten where it differs; folders of commits that never
        completed are removed. With ``os`` durability the journal itself may have
        lost records: a readable folder is then kept (added to the journal, or
        preferred when it is a legal step ahead of it). What cannot be rebuilt
        raises ``CorruptedFileError`` naming it, unless ``salvage`` moves it aside.
        Returns what was changed (with ``dry_run``: what would be, changing nothing).
        """
        repairs: list[Repair] = []
        self._recover_journal(repairs, dry_run=dry_run, salvage=salvage)
        self._recover_folders(repairs, dry_run=dry_run, salvage=salvage)
        if self.errors is not None:
            with self.errors.lock.lock():
                self._recover_errors(repairs, dry_run=dry_run, salvage=salvage)
                if not dry_run:
                    self._finish_clean()  # (a cleaned dump no commit vouches for goes)
        if not dry_run:
            self._clean_leftovers()
            self._intent.clear()
        for repair in repairs:
            logger.debug("Recovering %s: %s", self.directory.parent, repair)
        return repairs

    def _recover_journal(self, repairs: list[Repair], *, dry_run: bool, salvage: bool) -> None:
        try:
            result = self._journal.refresh()
            reason = "it is missing"
            if result is None and not dry_run and self._adopt_legacy():
                result = self._journal.refresh()
        except ForeignCacheError:
            result, reason = None, "it is not a neps_state journal"
        if result is None:
            trials = self._readable_folders(repairs, dry_run=dry_run, salvage=salvage)
            repairs.append(Repair(self.cache_path, f"rebuilt from {len(trials)} folders: {reason}"))
            if dry_run:
                self._index.clear()
                for trial in trials:
                    self._index.put(trial)
                return
            if self.cache_path.exists():
                rename(self.cache_path, self.cache_path.with_name(f"{self.CACHE_FILE_NAME}.old"))
            trials.sort(key=lambda t: (t.metadata.time_sampled, t.id))
            self._rewrite(Record(trials, self._state_from_file(), errors_size=self._errors_now()))
            return
        self._absorb(result)
        if result.bad_tail:
            n = len(result.bad_tail)
            what = f"cut {n} bytes after the last whole record (never acknowledged), saved aside"
            repairs.append(Repair(self.cache_path, what))
            if not dry_run:
                save_aside(self.cache_path, "torn", result.bad_tail, fsync=True)
                self._journal.truncate_tail()

    def _readable_folders(
        self, repairs: list[Repair], *, dry_run: bool, salvage: bool
    ) -> list[Trial]:
        trials = []
        for tid in list_trial_ids(self.directory):
            try:
                trials.append(read_trial(self.directory, tid))
            except CorruptedFileError as e:
                self._set_aside(tid, e, repairs, dry_run=dry_run, salvage=salvage)
        return trials

    def _set_aside(
        self,
        tid: str,
        error: CorruptedFileError,
        repairs: list[Repair],
        *,
        dry_run: bool,
        salvage: bool,
    ) -> None:
        """A folder that is unreadable and not in the journal: an error, or moved aside."""
        path = trial_dir(self.directory, tid)
        if not salvage:
            raise CorruptedFileError(
                error.path,
                f"{error.problem}; the journal does not hold trial {tid!r} either, so it"
                f" cannot be rebuilt (`neps-state repair {self.directory.parent}` moves it"
                " aside and continues with the rest)",
            )
        aside = self.directory / f"{_DAMAGED}{path.name}-{secrets.token_hex(4)}"
        repairs.append(Repair(path, f"moved aside to {aside.name}: {error.problem}"))
        if not dry_run:
            rename(path, aside)

    def _recover_folders(self, repairs: list[Repair], *, dry_run: bool, salvage: bool) -> None:
        adopted: list[Trial] = []
        for trial in list(self._index.values()):
            path = trial_dir(self.directory, trial.id)
            problems = _folder_problems(self.directory, trial)
            if not problems:
                continue
            newer = None if self.settings.fsync else _legal_successor(self.directory, trial)
            if newer is not None:
                repairs.append(Repair(path, "kept: a step ahead of the journal, which lost it"))
                adopted.append(newer)
                continue
            repairs += [
                Repair(path / name, f"rewritten from the journal: {p}") for name, p in problems
            ]
            if not dry_run:
                self._restore(trial)
        for tid in _folder_ids(self.directory) - self._index.keys():
            path = trial_dir(self.directory, tid)
            if self.settings.fsync:
                repairs.append(Repair(path, "removed: its commit never completed"))
                if not dry_run:
                    remove_tree(path)
                continue
            try:
                trial = read_trial(self.directory, tid)
            except CorruptedFileError as e:
                self._set_aside(tid, e, repairs, dry_run=dry_run, salvage=salvage)
                continue
            repairs.append(Repair(path, "added to the journal: its record was lost"))
            adopted.append(trial)
        if adopted and not dry_run:
            record = Record(adopted)
            self._journal.append(encode(record))
            self._apply(record)
            self._journal.flush()

    def _recover_cleaned_dump(
        self, repairs: list[Repair], data: bytes, base: int, *, dry_run: bool, salvage: bool
    ) -> bytes:
        """The dump, after putting in place the cleaned one a committed cleaning left."""
        digest = self._errors_digest
        if digest is None or hashlib.sha256(data[:base]).hexdigest() == digest:
            return data
        assert self.errors is not None  # noqa: S101 - the caller checked
        path = self.errors.path
        repairs.append(Repair(path, "replaced by the cleaned dump its last cleaning committed"))
        if dry_run:
            return data
        self._finish_clean()
        try:
            data = read_file(path)
        except CorruptedFileError:
            data = b""
        if hashlib.sha256(data[:base]).hexdigest() != digest and not salvage:
            raise CorruptedFileError(
                path,
                "is not the dump the last cleaning (a reset or removal of a trial) left, and"
                f" that dump is gone: error records cannot be rebuilt (`neps-state repair"
                f" {self.directory.parent}` accepts the loss)",
            )
        return data

    def _recover_errors(self, repairs: list[Repair], *, dry_run: bool, salvage: bool) -> None:
        """Make the error dump hold every journaled error line, and (fsync) nothing after."""
        assert self.errors is not None  # noqa: S101 - the caller checked
        path = self.errors.path
        try:
            data = read_file(path)
        except CorruptedFileError:
            data = b""
        base = self._errors_base or 0
        data = self._recover_cleaned_dump(repairs, data, base, dry_run=dry_run, salvage=salvage)
        if len(data) < base and not salvage:
            raise CorruptedFileError(
                path,
                f"holds {len(data)} bytes, fewer than the {base} made durable before the last"
                " cache consolidation: error records were lost and cannot be rebuilt"
                f" (`neps-state repair {self.directory.parent}` accepts the loss)",
            )
        new = data
        for i, (size, line) in enumerate(self._errors_journaled):
            if data[size : size + len(line)] != line:
                new = data[: min(size, len(data))] + b"".join(
                    x for _, x in self._errors_journaled[i:]
                )
                n = len(self._errors_journaled) - i
                repairs.append(Repair(path, f"{n} error record(s) rewritten from the journal"))
                break
        else:
            last = self._errors_journaled[-1] if self._errors_journaled else None
            end = self._errors_base if last is None else last[0] + len(last[1])
            # (No size known: a journal of version 0.1. What the dump holds is kept.)
            if self.settings.fsync and end is not None and len(data) > end:
                new = data[:end]
                what = f"cut {len(data) - end} bytes of records never acknowledged, saved aside"
                repairs.append(Repair(path, what))
        if new != data and not dry_run:
            if len(data) > len(new) and data.startswith(new):
                save_aside(path, "unacknowledged", data[len(new) :], fsync=True)
            write_atomic(path, new, fsync=True)

    # -- writing ----------------------------------------------------------------

    def store_new_trial(
        self, trial: Trial | Iterable[Trial], *, optimizer_state: bytes | None = None
    ) -> None:
        """Add new trials (all or none); an id that exists raises ``TrialAlreadyExistsError``.

        ``optimizer_state`` (a pickled ``OptimizationState``) is committed with them.
        """
        batch = [trial] if isinstance(trial, Trial) else list(trial)
        if not batch:
            if optimizer_state is not None:
                self._commit_alone(Record([], optimizer_state=optimizer_state))
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
        payload = encode(Record([p[0] for p in prepared], optimizer_state=optimizer_state))
        intent = self._begin("store", tuple(seen))
        try:
            mark_claims(self.directory, [p[0] for p in prepared])
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
        self._apply(Record([p[0] for p in prepared], optimizer_state=optimizer_state))
        self._maybe_consolidate()
        if self.sync_on_commit:
            self.flush()

    def _commit_alone(self, record: Record) -> None:
        """Append a record that changes no file (so it needs no intent)."""
        self.sync()
        self._journal.append(encode(record))
        self._apply(record)
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

        The hinted files are rewritten (but an unchanged ``previous_trial_id.txt``),
        and any file whose content changed, so the folder always matches the cache.
        ``error`` is appended to the error dump as part of the same commit.
        ``prepared`` (from :meth:`prepare_update` for this trial) supplies files
        already written; its copy of the trial is stored.
        """
        names = normalize_hints(hints)
        self.sync()
        path = trial_dir(self.directory, trial.id)
        old = self._index.get(trial.id)
        if old is None:
            raise TrialNotFoundError(trial.id, path)
        if prepared is not None and prepared.trial.id != trial.id:
            raise UsageError(f"prepared for trial {prepared.trial.id!r}, not {trial.id!r}")
        new = _own_copy(trial) if prepared is None else prepared.trial
        check_transition(old, new)
        if not is_real_dir(path):
            problem = "is not a folder" if os.path.lexists(path) else "is missing"
            raise CorruptedFileError(path, f"the trial folder {problem}")
        ready = {} if prepared is None else prepared.files
        files = render(new, path, [f for f in (*names, *changed_files(old, new)) if f not in ready])
        files.update(ready)
        if old.metadata.previous_trial_id == new.metadata.previous_trial_id:
            files.pop(PREVIOUS_FILE, None)  # the same as on disk: one system call less
        temps = {} if prepared is None else prepared.temps
        line = None if error is None else error.to_line()
        if line is not None and self.errors is None:
            raise UsageError("this TrialRepo has no error log to record the error in")
        errors = self.errors if line is not None else None
        with errors.lock.lock() if errors is not None else contextlib.nullcontext():
            if errors is not None:
                errors.end_last_line()
            size = None if errors is None else errors.size()
            record = Record([new], error=None if size is None or line is None else (size, line))
            payload = encode(record)
            intent = self._begin("update", (new.id,), errors_size=size, error_line=line)
            try:
                mark_claims(self.directory, [new], old)
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
        self._apply(record)
        self._maybe_consolidate()
        if self.sync_on_commit:
            self.flush()

    def clean_trial(self, trial_id: str, *, remove: bool) -> None:
        """Reset a trial to pending (or remove it) and drop its error records, in one commit.

        The commit is a new journal generation (as a consolidation writes), since the
        error lines the old one carried sit at offsets of the old dump. The cleaned
        dump is written (and fsynced) beside the old one first; the generation
        records its digest, and once it is in place the cleaned dump replaces the
        old. A writer that dies in between is rolled forward by the next lock holder
        (:meth:`_finish_clean`), or back if the generation never landed.
        """
        self.sync()
        path = trial_dir(self.directory, trial_id)
        old = self._index.get(trial_id)
        if old is None:
            raise TrialNotFoundError(trial_id, path)
        if not is_real_dir(path):
            raise CorruptedFileError(path, "the trial folder is missing or not a folder")
        new = None
        if not remove:
            new = old.clone()
            new.reset()
        errors = self.errors
        with errors.lock.lock() if errors is not None else contextlib.nullcontext():
            kept = None if errors is None else errors.without(trial_id)
            trials = [t for t in self._index.values() if t.id != trial_id or new is not None]
            if new is not None:
                trials = [new if t.id == trial_id else t for t in trials]
            cleaned = self.directory / _CLEANED_ERRORS
            intent = self._begin("remove" if remove else "reset_by_id", (trial_id,))
            try:
                if kept is not None:
                    write_atomic(cleaned, kept, fsync=True)
                if new is None:
                    rename(path, self.directory / f"{_TRASH}{unique()}")
                else:
                    self._write_files(path, render(new, path, changed_files(old, new)))
                fault_point("clean.prepared")
                size = len(kept) if kept is not None else self._errors_now_locked()
                digest = None if kept is None else hashlib.sha256(kept).hexdigest()
                self._rewrite(
                    Record(trials, self._optimizer_state, errors_size=size, errors_digest=digest)
                )
                fault_point("clean.committed")
                self._finish_clean()
            except BaseException:
                self._recover(intent)
                raise
            self._intent.clear()

    def _errors_now_locked(self) -> int | None:
        """The error dump's size, made durable (errors lock held)."""
        return None if self.errors is None else self.errors.make_durable()

    def _finish_clean(self) -> None:
        """Put a cleaned error dump in place if the journal vouches for it (locks held).

        A generation that records the dump's digest committed the cleaning; a
        cleaned dump it does not vouch for is what a writer left before its commit,
        and is removed. Then what the cleaning left in ``configs/`` goes too.
        """
        cleaned = self.directory / _CLEANED_ERRORS
        if os.path.lexists(cleaned):
            digest = self._errors_digest
            if self.errors is not None and digest is not None:
                try:
                    data = read_file(cleaned)
                except CorruptedFileError:
                    data = None
                if data is not None and hashlib.sha256(data).hexdigest() == digest:
                    rename(cleaned, self.errors.path)
                    fsync_dir(self.errors.path.parent)
            unlink(cleaned)
        self._clean_leftovers()

    def consolidate(self) -> None:
        """Rewrite the journal as one snapshot record (atomically: old or new, never broken)."""
        self.sync()
        trials = list(self._index.values())
        errors_size = None
        if self.errors is not None:
            # The snapshot drops the error lines its records carried: the dump is made
            # durable first, and its size is what a recovery may trust from now on.
            with self.errors.lock.lock():
                errors_size = self.errors.make_durable()
        self._rewrite(Record(trials, self._optimizer_state, errors_size=errors_size))
        logger.debug("Consolidated %s: %d trials", self.cache_path, len(trials))
        # As costly as the rewrite (one pass over the folder), and as rare.
        sweep(self.directory)
        sweep(self.scratch)

    def _rewrite(self, snapshot: Record) -> None:
        """Replace the journal by a new generation holding only ``snapshot``."""
        empty = not (
            snapshot.trials
            or snapshot.optimizer_state
            or snapshot.errors_size
            or snapshot.errors_digest is not None
        )
        self._journal.rewrite([] if empty else [encode(snapshot)])
        self._index.clear()
        self._optimizer_state = self._errors_base = self._errors_digest = None
        self._errors_journaled = []
        self._apply(snapshot)

    def _maybe_consolidate(self) -> None:
        s, journal = self.settings, self._journal
        by_records = journal.records > max(
            s.consolidation_limit, s.consolidation_ratio * len(self._index)
        )
        snapshot = journal.snapshot_end - HEADER_SIZE
        by_bytes = journal.tail_bytes > max(_TAIL_MIN_BYTES, _TAIL_RATIO * snapshot)
        if by_records or by_bytes:
            self.consolidate()

    def _begin(self, op: str, ids: tuple[str, ...], **extra: Any) -> Intent:
        intent = Intent(
            op=op,
            pid=pid(),
            token=self._journal.token,
            offset=self._journal.offset,
            ids=ids,
            **extra,
        )
        self._intent.begin(intent)
        return intent

    def _stage(self, files: dict[str, bytes | None]) -> Path:
        staging = self.directory / f"{_STAGING}{unique()}"
        mkdir(staging)
        for name, data in files.items():
            if data is not None:
                create_file(staging / name, data)
        return staging

    def _fill_spare(self, files: dict[str, bytes | None]) -> Path:
        spare = self._spare.fill(files)
        return self._stage(files) if spare is None else spare

    def _place(self, staging: Path, path: Path) -> None:
        rename(staging, path)

    def _write_files(
        self, path: Path, files: dict[str, bytes | None], temps: dict[str, Path] | None = None
    ) -> None:
        for name, data in files.items():
            tmp = None if temps is None else temps.pop(name, None)
            if data is None:
                unlink(path / name)
                continue
            if tmp is not None:
                try:
                    rename(tmp, path / name)
                    continue
                except FileNotFoundError:
                    logger.debug("%s vanished (a recovery cleaned the folder); rewriting", tmp)
            # The temp file is made in the scratch folder (see scratch_dir) and
            # renamed across into the trial's folder.
            write_atomic(path / name, data, fsync=False, tmp_dir=self.scratch_dir())

    # -- work done before the lock ------------------------------------------------

    def scratch_dir(self) -> Path:
        """``configs/.scratch``, made if missing (one system call when it exists).

        A small, long-used folder: a new file costs up to 10x more on ext4 in a
        folder made moments ago (measured: 0.8 against 0.09 ms), and every entry
        added to or removed from a folder of 100,000 trial folders costs more too.
        """
        try:
            mkdir(self.scratch)
        except FileExistsError:
            if not is_real_dir(self.scratch):
                raise CorruptedFileError(
                    self.scratch, "is not a folder (a symbolic link is not followed)"
                ) from None
        return self.scratch

    def store_ahead(self) -> AbstractContextManager[None]:
        """Enter before taking the lock: creates the folder a new trial will be written into.

        Optional: :meth:`store_new_trial` creates its folder itself otherwise. Creating
        files is the costly part of a store on some file systems (see ``_spare``).
        An unused folder is removed at exit.
        """
        if not is_real_dir(self.scratch):
            # Not made before a commit (nothing may change if the operation fails):
            # the first update makes it (see scratch_dir); until then, no spare.
            return contextlib.nullcontext()
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
        if not is_real_dir(self.scratch):
            return prepared  # (a link is never followed: the update then reports it)
        try:
            for name, data in prepared.files.items():
                if data is not None:
                    # In the scratch folder, not the trial's (see scratch_dir).
                    tmp, fd = hold_file(self.scratch, name, data)
                    prepared.temps[name] = tmp
                    prepared.fds.append(fd)
        except FileNotFoundError:
            # No scratch folder yet (made by the first update), or no configs/ folder
            # (the update reports it): the update writes its files itself.
            prepared.discard()
        except BaseException:
            prepared.discard()
            raise
        return prepared


def _leftover(name: str) -> bool:
    """Whether an entry of configs/ or its scratch folder is what a dead writer left (lock held).

    Staging folders and trash, and the temp files of ``_write_files``: all are made
    only with the lock held. (Spares, made without it, are for :func:`sweep`.)
    """
    return name.startswith((_STAGING, _TRASH)) or (name.startswith(".") and TMP_INFIX in name)


def _folder_ids(configs: Path) -> set[str]:
    """The ids of the ``config_<id>`` folders (other entries are not trials)."""
    out = set()
    for entry in os.scandir(configs):
        if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False):
            try:
                out.add(validate_trial_id(entry.name[len(PREFIX) :]))
            except InvalidTrialIdError:
                continue
    return out


def _folder_problems(configs: Path, trial: Trial) -> list[tuple[str, str]]:
    """Each file of the trial's folder that differs from the journal's version, and how."""
    path = trial_dir(configs, trial.id)
    if not is_real_dir(path):
        return [("", "the folder is missing" if not os.path.lexists(path) else "not a folder")]
    out = []
    for name, expected in render(trial, path, ALL_FILES).items():
        actual: bytes | None = None
        if os.path.lexists(path / name):
            try:
                actual = read_file(path / name)
            except CorruptedFileError:
                actual = b"/"  # a folder, link, FIFO...: rewritten
        if actual != expected:
            out.append((name, _how_it_differs(actual, expected)))
    if out:
        try:
            if read_trial(configs, trial.id) == trial:
                return []  # the same trial, in another writer's formatting (e.g. NePS's)
        except (CorruptedFileError, TrialNotFoundError):
            pass
    return out


def _how_it_differs(actual: bytes | None, expected: bytes | None) -> str:
    if actual is None:
        return "missing"
    if expected is None:
        return "should not exist"
    if not actual:
        return "empty"
    if not actual.strip(b"\0"):
        return "zero-filled"
    return "stale or damaged"


def _legal_successor(configs: Path, trial: Trial) -> Trial | None:
    """The folder's version of ``trial`` if it is readable and one step forward from it."""
    try:
        folder = read_trial(configs, trial.id)
        check_transition(trial, folder)
    except (CorruptedFileError, TrialNotFoundError, ValueError):
        return None
    step = (trial.metadata.state, folder.metadata.state)
    forward = step == (State.PENDING, State.EVALUATING) or (
        step[0] is State.EVALUATING and step[1].is_finished
    )
    return folder if forward else None


def _check_consistent(trial: Trial) -> None:
    state = trial.metadata.state
    if state.carries_report and trial.report is None:
        raise IllegalTransitionError(
            trial.id, "new", state.value, "a finished trial needs a report"
        )
    if state is State.PENDING and trial.report is not None:
        raise IllegalTransitionError(trial.id, "new", state.value, "a pending trial has no report")


def _reopen(cls: type[TrialRepo], directory: Path, options: dict[str, Any]) -> TrialRepo:
    return cls(directory, **options)
