"""Typed configuration of a sweep: the trial template, the search space, ASHA, resources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmplatform.config import ConfigError, ModelConfig, TrainConfig, build_config, merge, nest
from mmplatform.sweep.search_space import ParamSpec

AGGREGATOR_KEY = "model.aggregator"
OPTIONS_PREFIX = "model.aggregator_options."
FAMILY_KEY = "model.family"
FAMILY_OPTIONS_PREFIX = "model.family_options."


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerConfig(_Section):
    kind: Literal["asha", "fifo"] = "asha"
    """``asha``: successive halving on the epoch we report; ``fifo``: plain random search."""
    max_epochs: int = Field(10, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)


class SweepConfig(_Section):
    name: str
    """Tune experiment name; rerunning a sweep with the same name and storage continues it."""
    base: dict[str, Any] = Field(default_factory=dict)
    """The trial template: a TrainConfig tree that the sampled values override."""
    search_space: dict[str, ParamSpec] = Field(default_factory=dict)
    num_samples: int = Field(8, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Default: as many trials as the cluster's CPUs/GPUs can hold at once."""
    time_budget_s: float | None = Field(None, gt=0)
    """Tune stops the whole sweep after this many seconds (trials then end where they are);
    ``None``: no limit. Rerunning the sweep's command continues it."""
    search_seed: int | None = Field(None, ge=0, lt=2**32)
    """Seed of the random search (Tune's BasicVariantGenerator): the same seed draws the same
    trials, so ASHA and FIFO sweeps (or two reruns) can be compared trial for trial."""
    trial_max_failures: int = Field(1, ge=0)
    """Tune retries a failed trial (its driver) this many times; it resumes its checkpoints."""
    driver_resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    """What each trial's driver (the Tune function that runs the TorchTrainer) requests."""

    def trial_config(self, sampled: dict[str, Any], trial_id: str) -> TrainConfig:
        """The TrainConfig of one trial: template + sampled values + sweep bookkeeping.

        Sampled aggregator options the trial's aggregator does not take are left out: a study may
        search the flows' options and also run MoPoE, which has none (conditional parameters)."""
        aggregator = sampled.get(AGGREGATOR_KEY) or self.base.get("model", {}).get("aggregator") \
            or ModelConfig.model_fields["aggregator"].default
        family = self.family_of(sampled)
        tree = merge(self.base, nest(applicable(sampled, aggregator, family)))
        tree = merge(tree, {
            "name": f"{self.name}-{trial_id}",
            "training": {"epochs": self.scheduler.max_epochs},
            # What a person reads in the Aim UI: the sweep as experiment, runs named by trial and method.
            "tracking": {"experiment": self.name, "run_name": f"{self.name}/{trial_id} {method_name(family, aggregator)}",
                         "tags": {"sweep": self.name, "trial_id": trial_id}},
        })
        return build_config(tree)

    def family_of(self, sampled: dict[str, Any]) -> str:
        return sampled.get(FAMILY_KEY) or self.base.get("model", {}).get("family") \
            or ModelConfig.model_fields["family"].default

    def validate_trials(self) -> TrainConfig:
        """Check every value a trial can get before Ray starts: each choice or grid value and both
        bounds of a range, one key at a time (the others at their first value), and each searched
        aggregator with every value of the other keys (their options depend on it). Returns the
        config of the first values."""
        example = {key: _edge_values(spec)[0] for key, spec in self.search_space.items()}
        first = self.trial_config(example, "validation")
        aggregators = _edge_values(self.search_space[AGGREGATOR_KEY]) if AGGREGATOR_KEY in self.search_space \
            else [None]
        for aggregator in aggregators:
            base = example if aggregator is None else {**example, AGGREGATOR_KEY: aggregator}
            for key, spec in self.search_space.items():
                if key == AGGREGATOR_KEY:
                    continue
                for value in _edge_values(spec)[1:]:
                    self.trial_config({**base, key: value}, "validation")
            if aggregator is not None:
                self.trial_config(base, "validation")
        return first


def _edge_values(spec) -> list[Any]:
    """The values a trial can get at the edges: every choice/grid value, a range's two bounds."""
    return list(spec.values) if hasattr(spec, "values") else [spec.low, spec.high]


def method_name(family: str, aggregator: str) -> str:
    """What a trial trains, as its run name and the trials table say it: the aggregator for the
    ``aggregator`` family (``mopoe``), else the family (``jnf``)."""
    return aggregator if family == ModelConfig.model_fields["family"].default else family


def applicable(sampled: dict[str, Any], aggregator: str, family: str | None = None) -> dict[str, Any]:
    """``sampled`` without the options that ``aggregator`` and ``family`` do not take (a study of
    several families searches each one's options only where it applies)."""
    from models.aggregators import AGGREGATORS  # registers every aggregator
    from models.aggregators.base import options_model
    from models.families import FAMILIES

    kept = dict(sampled)
    if aggregator in AGGREGATORS:  # otherwise build_config names the field and the registered ones
        accepted = set(options_model(aggregator).model_fields)
        kept = {key: value for key, value in kept.items()
                if not key.startswith(OPTIONS_PREFIX) or key.removeprefix(OPTIONS_PREFIX) in accepted}
    if family in FAMILIES:
        accepted = set(FAMILIES[family].options.model_fields)
        kept = {key: value for key, value in kept.items()
                if not key.startswith(FAMILY_OPTIONS_PREFIX) or key.removeprefix(FAMILY_OPTIONS_PREFIX) in accepted}
    return kept


def build_sweep_config(tree: dict[str, Any]) -> SweepConfig:
    try:
        config = SweepConfig.model_validate(tree)
    except ValidationError as error:
        lines = [f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()]
        raise ConfigError("invalid sweep configuration:\n  " + "\n  ".join(lines)) from None
    config.validate_trials()
    return config
