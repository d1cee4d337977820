"""Trials: a configuration with its metadata and, once evaluated, its report."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

from neps_state._errors import (
    IllegalTransitionError,
    InvalidReportError,
    InvalidTrialIdError,
    NotReportedYetError,
    UsageError,
)

ReportAs = Literal["success", "failed", "crashed"]

MAX_TRIAL_ID_BYTES = 200
"""Longest id in UTF-8 bytes: ``config_<id>`` must fit a 255-byte file name."""


def validate_trial_id(trial_id: object) -> str:
    """Return ``trial_id`` if it is a safe, single path component, else raise."""
    if not isinstance(trial_id, str):
        raise InvalidTrialIdError(trial_id, f"must be a str, not {type(trial_id).__name__}")
    if not trial_id:
        raise InvalidTrialIdError(trial_id, "must not be empty")
    if len(trial_id.encode("utf-8", "surrogatepass")) > MAX_TRIAL_ID_BYTES:
        raise InvalidTrialIdError(trial_id, f"longer than {MAX_TRIAL_ID_BYTES} bytes")
    if "/" in trial_id or "\\" in trial_id:
        raise InvalidTrialIdError(trial_id, "must not contain a path separator")
    if ".." in trial_id:
        raise InvalidTrialIdError(trial_id, "must not contain '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in trial_id):
        raise InvalidTrialIdError(trial_id, "must not contain NUL or control characters")
    if trial_id != trial_id.strip():
        raise InvalidTrialIdError(trial_id, "must not start or end with whitespace")
    return trial_id


class State(str, Enum):
    """The state of a trial; the values are the strings stored in ``metadata.json``.

    As NePS's own ``StrEnum``: a state equals its string (``State.SUCCESS ==
    "success"``) and prints as it, so NePS's optimizers compare either way.
    ``EXTERNAL`` is a trial imported with its result (``neps.import_trials``).
    """

    EXTERNAL = "external"
    PENDING = "pending"
    EVALUATING = "evaluating"
    SUCCESS = "success"
    FAILED = "failed"
    CRASHED = "crashed"
    CORRUPTED = "corrupted"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)

    @property
    def is_finished(self) -> bool:
        """Whether the trial was evaluated here and carries its report."""
        return self in _FINISHED

    @property
    def carries_report(self) -> bool:
        """Whether a trial in this state must have a report (finished or imported)."""
        return self in _FINISHED or self is State.EXTERNAL


_FINISHED = frozenset({State.SUCCESS, State.FAILED, State.CRASHED})

# Edges a trial may take in an ordinary update. Resetting to PENDING and marking
# CORRUPTED or UNKNOWN are explicit operations and allowed from every state.
_LEGAL_EDGES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.PENDING, State.EVALUATING}),
    State.EVALUATING: frozenset({State.EVALUATING, *_FINISHED}),
    State.SUCCESS: frozenset({State.SUCCESS}),
    State.FAILED: frozenset({State.FAILED}),
    State.CRASHED: frozenset({State.CRASHED}),
    State.CORRUPTED: frozenset({State.CORRUPTED}),
    State.UNKNOWN: frozenset({State.UNKNOWN}),
    State.EXTERNAL: frozenset({State.EXTERNAL}),
}
_ALWAYS_ALLOWED = frozenset({State.PENDING, State.CORRUPTED, State.UNKNOWN})


def check_transition(old: Trial, new: Trial) -> None:
    """Raise ``IllegalTransitionError`` unless ``old`` may be replaced by ``new``."""
    a, b = old.metadata.state, new.metadata.state
    if b not in _ALWAYS_ALLOWED and b not in _LEGAL_EDGES[a]:
        raise IllegalTransitionError(new.id, a.value, b.value, "not a legal state change")
    if (
        a is State.EVALUATING
        and (b is State.EVALUATING or b.is_finished)
        and old.metadata.evaluating_worker_id != new.metadata.evaluating_worker_id
    ):
        raise IllegalTransitionError(
            new.id,
            a.value,
            b.value,
            f"already evaluated by worker {old.metadata.evaluating_worker_id!r},"
            f" not {new.metadata.evaluating_worker_id!r}",
        )
    if b.carries_report and new.report is None:
        raise IllegalTransitionError(new.id, a.value, b.value, "a finished trial needs a report")
    if b is State.PENDING and new.report is not None:
        raise IllegalTransitionError(new.id, a.value, b.value, "a pending trial has no report")


@dataclass
class MetaData:
    """What is known about a trial besides its config and report (``metadata.json``)."""

    id: str
    location: str
    state: State
    previous_trial_id: str | None
    previous_trial_location: str | None
    sampling_worker_id: str
    time_sampled: float
    evaluating_worker_id: str | None = None
    evaluation_duration: float | None = None
    time_submitted: float | None = None
    time_started: float | None = None
    time_end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, with the state as its string value."""
        d = {name: getattr(self, name) for name in _METADATA_FIELDS}
        d["state"] = self.state.value
        return d


_METADATA_FIELDS = tuple(f.name for f in fields(MetaData))


def _same_number(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_number(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@dataclass(eq=False)
class Report:
    """The outcome of evaluating a trial (``report.yaml``).

    Equality treats NaN as equal to NaN and compares errors by their message,
    since an error is stored as text.
    """

    objective_to_minimize: float | list[float] | None
    cost: float | None
    learning_curve: list[float] | list[list[float]] | None
    extra: dict[str, Any]
    err: BaseException | None
    tb: str | None
    reported_as: ReportAs
    evaluation_duration: float | None

    def __post_init__(self) -> None:
        if isinstance(self.err, str):
            self.err = Exception(self.err)
        if self.reported_as not in ("success", "failed", "crashed"):
            raise UsageError(
                f"reported_as must be success, failed or crashed: {self.reported_as!r}"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return all(
            _same_number(getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name != "err"
        ) and _err_text(self.err) == _err_text(other.err)

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # The error travels as its message: arbitrary exceptions may not unpickle.
        state = dict(self.__dict__)
        state["err"] = _err_text(self.err)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self.err, str):
            self.err = Exception(self.err)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready form, with the error as its message."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["err"] = _err_text(self.err)
        return d


def _err_text(err: BaseException | None) -> str | None:
    return None if err is None else str(err)


# Aliases for annotations inside ``Trial``, whose class attributes shadow these names.
_State = State
_MetaData = MetaData
_Report = Report


@dataclass
class Trial:
    """A configuration together with its metadata and, once evaluated, its report."""

    State: ClassVar[type[_State]] = State
    MetaData: ClassVar[type[_MetaData]] = MetaData
    Report: ClassVar[type[_Report]] = Report
    NotReportedYetError: ClassVar[type[NotReportedYetError]] = NotReportedYetError

    config: dict[str, Any]
    metadata: _MetaData
    report: _Report | None = None
    source: str = "run"

    @classmethod
    def new(
        cls,
        *,
        trial_id: str,
        config: Mapping[str, Any],
        location: str,
        previous_trial: str | None,
        previous_trial_location: str | None,
        time_sampled: float,
        worker_id: int | str,
    ) -> Trial:
        """A trial that was just sampled: pending, with no report."""
        return cls(
            config=to_plain(config),
            metadata=MetaData(
                id=validate_trial_id(trial_id),
                location=location,
                state=State.PENDING,
                previous_trial_id=previous_trial,
                previous_trial_location=previous_trial_location,
                sampling_worker_id=str(worker_id),
                time_sampled=time_sampled,
            ),
        )

    @classmethod
    def load_from_dict(
        cls, data: Sequence[Any], *, worker_id: str, trial_directory: Path | str
    ) -> list[Trial]:
        """Trials imported with their results, in state ``EXTERNAL``.

        ``data`` holds NePS's ``ImportedConfig``s (``id``, ``config``, ``result``); each
        trial continues the one before it, as NePS records them.
        """
        trials: list[Trial] = []
        for item in data:
            result = item.result
            info = result.get("info_dict") or {}
            tid = validate_trial_id(item.id)
            trials.append(
                cls(
                    config=to_plain(item.config),
                    metadata=MetaData(
                        id=tid,
                        location=str(Path(trial_directory) / f"config_{tid}"),
                        state=State.EXTERNAL,
                        previous_trial_id=trials[-1].id if trials else None,
                        previous_trial_location=None,
                        sampling_worker_id=str(worker_id),
                        time_sampled=math.nan,
                        evaluating_worker_id=str(worker_id),
                        evaluation_duration=info.get("evaluation_duration"),
                        time_started=info.get("time_started"),
                        time_end=info.get("time_end"),
                    ),
                    report=Report(
                        objective_to_minimize=_floats(result["objective_to_minimize"]),
                        cost=None if result.get("cost") is None else float(result["cost"]),
                        learning_curve=_floats(result.get("learning_curve")),
                        extra={},
                        err=None,
                        tb=None,
                        reported_as="success",
                        evaluation_duration=info.get("evaluation_duration"),
                    ),
                    source="imported",
                )
            )
        return trials

    @property
    def id(self) -> str:
        """The trial's id."""
        return self.metadata.id

    def clone(self) -> Trial:
        """A copy that shares nothing mutable at the first two levels."""
        report = self.report
        if report is not None:
            report = Report(**{**report.__dict__, "extra": dict(report.extra)})
        return Trial(
            config=dict(self.config),
            metadata=MetaData(**self.metadata.__dict__),
            report=report,
            source=self.source,
        )

    def set_evaluating(self, *, time_started: float, worker_id: int | str) -> None:
        """Mark the trial as being evaluated by ``worker_id``."""
        self.metadata.state = State.EVALUATING
        self.metadata.time_started = time_started
        self.metadata.evaluating_worker_id = str(worker_id)

    def set_complete(
        self,
        *,
        report_as: ReportAs,
        time_end: float,
        objective_to_minimize: float | list[float] | None,
        cost: float | None,
        learning_curve: list[float] | list[list[float]] | None,
        err: BaseException | None,
        tb: str | None,
        extra: Mapping[str, Any] | None,
        evaluation_duration: float | None,
    ) -> _Report:
        """Set the final state and end time; return the report (not yet attached).

        A value a trial cannot store (``time_end=...``, an objective that is text)
        raises ``InvalidReportError`` naming the field, and changes nothing.
        """
        if report_as not in ("success", "failed", "crashed"):
            raise InvalidReportError(
                self.id, "report_as", report_as, "expected 'success', 'failed' or 'crashed'"
            )
        _check_number(self.id, "time_end", time_end, optional=False)
        _check_number(self.id, "cost", cost)
        _check_number(self.id, "evaluation_duration", evaluation_duration)
        _check_numbers(self.id, "objective_to_minimize", objective_to_minimize)
        _check_numbers(self.id, "learning_curve", learning_curve, depth=2)
        if extra is not None and not isinstance(extra, Mapping):
            raise InvalidReportError(self.id, "extra", extra, "expected a mapping or None")
        if err is not None and not isinstance(err, BaseException | str):
            raise InvalidReportError(self.id, "err", err, "expected an exception or None")
        if tb is not None and not isinstance(tb, str):
            raise InvalidReportError(self.id, "tb", tb, "expected a str or None")
        report = Report(
            objective_to_minimize=_floats(objective_to_minimize),
            cost=None if cost is None else float(cost),
            learning_curve=_floats(learning_curve),
            extra=to_plain(extra or {}),
            err=err,
            tb=tb,
            reported_as=report_as,
            evaluation_duration=evaluation_duration,
        )
        self.metadata.state = State(report_as)
        self.metadata.time_end = time_end
        self.metadata.evaluation_duration = evaluation_duration
        return report

    def set_corrupted(self) -> None:
        """Mark the trial as corrupted."""
        self.metadata.state = State.CORRUPTED

    def reset(self) -> None:
        """Make the trial pending again: evaluation fields and report are cleared."""
        m = self.metadata
        self.metadata = MetaData(
            id=m.id,
            location=m.location,
            state=State.PENDING,
            previous_trial_id=m.previous_trial_id,
            previous_trial_location=m.previous_trial_location,
            sampling_worker_id=m.sampling_worker_id,
            time_sampled=m.time_sampled,
        )
        self.report = None


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_number(trial_id: str, name: str, value: object, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not _is_number(value):
        expected = "a number or None" if optional else "a number (e.g. time.time())"
        raise InvalidReportError(trial_id, name, value, f"expected {expected}")


def _numeric(value: object, depth: int) -> bool:
    if _is_number(value):
        return True
    return (
        depth > 0 and isinstance(value, list | tuple) and all(_numeric(v, depth - 1) for v in value)
    )


def _check_numbers(trial_id: str, name: str, value: object, *, depth: int = 1) -> None:
    """``value`` is None, a number, or a list of them (nested up to ``depth`` deep)."""
    if value is not None and not _numeric(value, depth):
        raise InvalidReportError(
            trial_id, name, value, "expected a number, a list of numbers or None"
        )


def _floats(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [_floats(v) for v in value]
    return float(value)


def to_plain(value: Any) -> Any:
    """Convert to the types YAML round-trips: dicts, lists and Python scalars."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value
