"""Unpickling with an allowlist: a pickle from a run directory never runs code.

A pickle names the callables that rebuild it (``module.name``), and a plain
``pickle.loads`` imports and calls whatever it names: ``os.system`` included.
:func:`loads` resolves only:

- the data classes of this package (the optimizer state, and trials of journals
  written before version 0.2), and a few constructors of builtins that run no code;
- numpy's array, scalar, dtype and RNG constructors, when numpy is installed;
- *stand-ins* for the data classes of upstream NePS (its ``OptimizationState``,
  ``BudgetInfo``, ``SeedSnapshot``) and for torch's tensor rebuilders (NePS keeps
  torch's RNG state): objects holding the data, built without importing NePS or
  torch. So a run NePS wrote is read where NePS is not installed, and torch's own
  loader (which unpickles anything) is never called;
- what the user adds (``Settings(pickle_allow=...)`` or ``NEPS_STATE_PICKLE_ALLOW``,
  comma-separated ``module.name`` or ``module.*``), imported for real.

Anything else raises :class:`UnsafeFileError` naming the file and the refused
global, before anything was imported or called.
"""

from __future__ import annotations

import functools
import importlib
import io
import pickle
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neps_state._errors import CorruptedFileError, UnsafeFileError

_OURS = {
    "neps_state._optimizer": (
        "OptimizationState",
        "BudgetInfo",
        "SeedSnapshot",
        "kept_by_neps_state",
    ),
    "neps_state._trial": ("Trial", "MetaData", "Report", "State"),
    "builtins": ("set", "frozenset", "complex", "bytearray", "slice", "range"),
    "collections": ("OrderedDict",),
    "copyreg": ("_reconstructor",),
}
_NUMPY = {
    "numpy": ("dtype", "ndarray"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy.core.numeric": ("_frombuffer",),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy.random._pickle": (
        "__bit_generator_ctor",
        "__generator_ctor",
        "__randomstate_ctor",
    ),
}
_STANDINS = {
    "neps.state.optimizer": ("OptimizationState", "BudgetInfo"),
    "neps.state.seed_snapshot": ("SeedSnapshot",),
}
_OPAQUE = {
    "torch._utils": ("_rebuild_tensor", "_rebuild_tensor_v2"),
    "torch.storage": ("_load_from_bytes",),
}

ALLOWED: frozenset[str] = frozenset(
    f"{m}.{n}" for table in (_OURS, _NUMPY) for m, names in table.items() for n in names
)
"""Globals resolved for real (imported); see the module's docstring."""
STANDINS: frozenset[str] = frozenset(
    f"{m}.{n}" for table in (_STANDINS, _OPAQUE) for m, names in table.items() for n in names
)
"""Globals replaced by data-only stand-ins (nothing of theirs is imported)."""


class Foreign:
    """A stand-in for a data class of another package: its attributes, no behaviour."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} (stand-in)>"


class Opaque:
    """What a refused-to-run rebuilder (torch's) would have made; kept as its arguments."""

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.args = args

    def __repr__(self) -> str:
        return f"<{self.name} (not rebuilt)>"


@functools.cache
def _standin(module: str, name: str) -> type[Foreign]:
    return type(name, (Foreign,), {"__module__": module, "__qualname__": name})


def _opaque(qualified: str) -> Any:
    def build(*args: Any) -> Opaque:
        return Opaque(qualified, *args)

    return build


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, extra: frozenset[str]) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path
        self.extra = extra

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in ALLOWED or qualified in self.extra or f"{module}.*" in self.extra:
            return _resolve(module, name)
        if qualified in STANDINS:
            return _standin(module, name) if module.startswith("neps.") else _opaque(qualified)
        raise UnsafeFileError(self.path, qualified)


def _resolve(module: str, name: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


_loading = threading.local()


def loading() -> tuple[Path, frozenset[str]] | None:
    """The file :func:`loads` is unpickling in this thread (and its allowlist), or None.

    A callable a pickle names can tell by this that this package reads it, not a
    plain ``pickle.load`` (see ``kept_by_neps_state``).
    """
    stack: list[tuple[Path, frozenset[str]]] = getattr(_loading, "stack", [])
    return stack[-1] if stack else None


def loads(data: bytes, path: Path, *, allow: Iterable[str] = ()) -> Any:
    """Unpickle ``data`` (from the file ``path``) through the allowlist.

    ``allow`` adds ``module.name`` or ``module.*`` entries. Raises ``UnsafeFileError``
    for a refused global and ``CorruptedFileError`` for anything else that fails.
    """
    if not data:
        raise CorruptedFileError(path, "is empty")
    extra = frozenset(allow)
    stack = _loading.__dict__.setdefault("stack", [])
    stack.append((path, extra))
    try:
        return _Unpickler(data, path, extra).load()
    except CorruptedFileError:
        raise
    except ModuleNotFoundError as e:
        raise CorruptedFileError(
            path, f"needs the package {e.name!r} to be read, which is not installed"
        ) from None
    except Exception as e:  # noqa: BLE001 - unpickling raises anything; we report it typed
        raise CorruptedFileError(path, f"does not unpickle: {type(e).__name__}: {e}") from None
    finally:
        stack.pop()
