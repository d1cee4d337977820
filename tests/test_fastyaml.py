"""The fast YAML path writes exactly PyYAML's bytes, or stands aside."""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from neps_state._fastyaml import FastYaml
from neps_state._io import _yaml_text, dump_yaml

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["yes", "no", "on", "null", "~", "1e3", "0x10", "-", "a: b", "#x", "'", ""]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.lists(st.lists(scalars, max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
keys = st.one_of(st.text(max_size=20), st.text(min_size=120, max_size=140), st.integers())


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_same_bytes_as_pyyaml_or_none(obj: dict[Any, Any]) -> None:
    fast = FastYaml(_yaml_text).dump(obj)
    if fast is not None:
        assert fast == _yaml_text(obj)


@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_dump_yaml_round_trips(obj: dict[str, Any]) -> None:
    try:
        data = dump_yaml(obj, None)  # type: ignore[arg-type]
    except UnicodeEncodeError:
        return  # lone surrogates: PyYAML's own path fails the same way
    loaded = yaml.safe_load(data)
    assert _nan_free(loaded) == _nan_free(obj)


def _nan_free(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    if isinstance(obj, dict):
        return {k: _nan_free(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_free(v) for v in obj]
    return obj


def test_covers_what_trials_write() -> None:
    """Configs and reports of the usual kind take the fast path (else it speeds nothing)."""
    fast = FastYaml(_yaml_text)
    config = {"learning_rate": 1e-05, "optimizer": "adamw", "layers": 3, "dropout": 0.0}
    report: dict[str, Any] = {
        "objective_to_minimize": 0.25,
        "cost": None,
        "learning_curve": [0.9, 0.5, 0.25],
        "extra": {},
        "err": None,
        "tb": None,
        "reported_as": "success",
        "evaluation_duration": 1.5,
    }
    for obj in (config, report, {}):
        assert fast.dump(obj) == _yaml_text(obj)
    assert fast.dump({"note": "two words"}) is None
    assert fast.dump({"nested": {"a": 1}}) is None
