"""What a run can store: plain scalars, flat hparams, float metric values.

Aim pickles nothing for us: params and summaries must be Python scalars, dicts and lists,
and a metric sequence keeps one dtype. Training hands over numpy and torch numbers and a
nested config; this module turns them into that form, and refuses what cannot be stored
with a message that says what to do instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Scalar = bool | int | float | str | None


def flatten_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested config -> flat ``{"model.aggregator": "mopoe", ...}``.

    Lists and tuples become their JSON text: hparams stay small and flat (Aim's UI and
    queries slow down with many or deep params), and a list is still comparable with ``==``.
    """
    flat: dict[str, Scalar] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{dotted}."))
        elif isinstance(value, (list, tuple)):
            flat[dotted] = json.dumps(to_plain(value))
        else:
            flat[dotted] = to_plain(value)
    return flat


def to_plain(value: Any) -> Any:
    """Numbers from torch/numpy -> Python numbers, recursively; Aim and JSON take only these."""
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars, 0-d arrays and tensors
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a run: {value!r}")


def checked_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """``hparams`` as flat plain scalars; a nested value is refused (flatten it first)."""
    checked: dict[str, Scalar] = {}
    for key, value in (hparams or {}).items():
        value = to_plain(value)
        if isinstance(value, (dict, list)):
            raise ValueError(f"hparam {key!r} is not a scalar; pass flatten_hparams(config)")
        checked[str(key)] = value
    return checked


def metric_value(value: Any) -> float:
    """Always a float: a sequence that gets an int first and a float later makes Aim rewrite
    its dtype (and warn) on every such switch."""
    return float(to_plain(value))
