"""PyYAML's block output of the mappings a trial writes, without PyYAML's representer.

A config or a report is a flat mapping of numbers, short strings, nulls and lists
of them; PyYAML spends most of a sample's serialization time walking such a
mapping through its representer. :func:`dump` writes the same bytes for those
mappings (the test suite compares it with ``yaml.dump`` on generated ones) and
returns None for anything else, which the caller then gives to PyYAML. Strings and
keys are rendered once by PyYAML itself and remembered; only strings without
spaces are taken, since the emitter may fold text at a space depending on its column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

_CACHE_LIMIT = 4096
_MAX_TEXT = 200


class FastYaml:
    """The fast path of one PyYAML dumper configuration (``render`` is that dumper)."""

    def __init__(self, render: Callable[[object], str]) -> None:
        self._render = render
        self._keys: dict[str, str | None] = {}
        self._texts: dict[str, str | None] = {}

    def dump(self, obj: object) -> str | None:
        """``obj`` as the dumper would write it, or None if this path does not cover it."""
        if type(obj) is not dict:
            return None
        if not obj:
            return "{}\n"
        parts: list[str] = []
        for key, value in obj.items():
            k = self._key(key) if type(key) is str else None
            if k is None:
                return None
            if type(value) is list and value:
                items = [self._scalar(v) for v in value]
                if None in items:
                    return None
                parts.append(f"{k}:\n")
                parts.extend(f"- {item}\n" for item in items)
                continue
            v = self._scalar(value)
            if v is None:
                return None
            parts.append(f"{k}: {v}\n")
        return "".join(parts)

    def _scalar(self, value: Any) -> str | None:
        kind = type(value)
        plain = _PLAIN.get(kind)
        if plain is not None:
            return plain(value)
        if kind is str:
            return self._text(value)
        if kind in (dict, list) and not value:
            return "{}" if kind is dict else "[]"
        return None

    def _try(self, obj: object) -> str:
        # What the dumper refuses is left to the slow path, which reports it.
        try:
            return self._render(obj)
        except Exception:  # noqa: BLE001
            return ""

    def _text(self, value: str) -> str | None:
        found = self._texts.get(value, "")
        if found != "":
            return found
        text = None
        if len(value) <= _MAX_TEXT and " " not in value:
            text = _single_line(self._try({"k": value}), "k: ")
        if len(self._texts) < _CACHE_LIMIT:
            self._texts[value] = text
        return text

    def _key(self, key: str) -> str | None:
        found = self._keys.get(key, "")
        if found != "":
            return found
        text = None
        if len(key) <= _MAX_TEXT:
            line = self._try({key: 0})
            if line.endswith(": 0\n") and not line.startswith("?"):
                text = _single_line(line[: -len(": 0\n")] + "\n", "")
        if len(self._keys) < _CACHE_LIMIT:
            self._keys[key] = text
        return text


def _single_line(text: str, prefix: str) -> str | None:
    """The line after ``prefix`` if ``text`` is that one line, else None."""
    if not text.startswith(prefix) or text.count("\n") != 1 or not text.endswith("\n"):
        return None
    return text[len(prefix) : -1]


def _float(value: float) -> str:
    # PyYAML's float representer: special values by name, else repr with a '.0'
    # put before an exponent that has no fraction (1e+17 -> 1.0e+17).
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


_PLAIN: dict[type, Callable[[Any], str]] = {
    float: _float,
    int: str,
    bool: lambda v: "true" if v else "false",
    type(None): lambda _: "null",
}
