"""Typed options of a plug-in (an aggregator, a model family), checked with one-line errors.

Both ``model.aggregator_options`` and ``model.family_options`` are a pydantic model per plug-in;
a config error must name the option, what is wrong and the value given, or, for an unknown key,
the options the plug-in does take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


def parse_typed_options(model: type[BaseModel], options: Mapping[str, Any], owner: str) -> BaseModel:
    """``options`` validated by ``model``; ``ValueError`` with one ``; ``-separated problem per
    option, each naming it (``owner`` says whose options they are, e.g. ``family jnf``)."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                problems.append(f"{key}: not an option of {owner} (its options: {known})")
            else:
                problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
        raise ValueError("; ".join(problems)) from None
