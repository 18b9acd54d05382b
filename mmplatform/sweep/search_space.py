"""Search spaces in the typed config, turned into Ray Tune domains.

A search space maps dotted config fields (``model.beta``,
``model.aggregator_options.num_flows``) to a parameter spec. The specs are plain data (so
a sweep's space is written in YAML, logged and validated before Ray starts); each spec
type knows its Tune domain through a registry, not an if/elif chain.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import tune


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Spec):
    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)

    def to_tune(self):
        return tune.choice(self.values)


class Grid(_Spec):
    """Every value is tried (times ``num_samples``)."""

    type: Literal["grid"] = "grid"
    values: list[Any] = Field(min_length=1)

    def to_tune(self):
        return tune.grid_search(self.values)


class Uniform(_Spec):
    type: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def to_tune(self):
        return tune.uniform(self.low, self.high)


class LogUniform(Uniform):
    type: Literal["loguniform"] = "loguniform"

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        return self

    def to_tune(self):
        return tune.loguniform(self.low, self.high)


ParamSpec = Annotated[Union[Choice, Grid, Uniform, LogUniform], Field(discriminator="type")]


def to_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """``{"model.beta": Uniform(...)}`` -> Tune param space with the same dotted keys."""
    return {key: spec.to_tune() for key, spec in space.items()}
