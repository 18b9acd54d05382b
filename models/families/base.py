"""Model families: the plug-in that owns a model's objective, its training stages and what it can
do at evaluation time.

``model.family`` picks one by name from ``FAMILIES``:

``aggregator``
    ``MultimodalVAE`` + an aggregator from ``models.aggregators`` (PoE, MoE, MoPoE, mmJSD, the
    f-means, AVG): one stage, every parameter trained.
``mmvm``
    one latent per modality tied by a data-dependent mixture prior (``models.families.mmvm``).
``jnf``, ``jnf_dcca``
    a joint encoder, then unimodal flow encoders fitted to it; DCCA features for ``jnf_dcca``
    (``models.families.jnf``).

A family declares:

* its **options** (``model.family_options``), a pydantic model: an unknown key or a bad value
  fails in the config, naming the option;
* its **stages** for a training of ``E`` epochs: each stage names the parameter groups it trains
  (the model's ``parameter_groups``); every other group is frozen, parameters and batch-norm
  statistics alike. ``StagedModel`` implements the freezing; the training loop only calls
  ``set_stage``;
* its **abilities** at evaluation: a family without unconditional generation (MMVM) gets no
  random coherence, no prior PRD and no prior sample grid, and the run says so; one without a
  tractable log p(X) refuses the ``log_likelihood`` metric in the config;
* a **check** of the shared model settings it cannot honour (style latents, K > 1), refused in the
  config with the field's name.

Nothing outside a family's module names a family: the training loop, evaluation, Aim and the
sweeps read these declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

from data_pipelines.modality import ModalitySpec
from models.options import parse_typed_options


@dataclass(frozen=True)
class Stage:
    """A run of consecutive epochs with one objective and one set of trained parameter groups."""

    name: str
    epochs: int
    trainable: tuple[str, ...] | None = None
    """Parameter groups (``StagedModel.parameter_groups``) trained in this stage; ``None`` trains
    every parameter of the model."""


@dataclass(frozen=True)
class StageSchedule:
    """The stages of one training, in order; epochs are numbered from 1 across all of them (ASHA
    sees one counter)."""

    stages: tuple[Stage, ...]

    @property
    def epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def index_at(self, epoch: int) -> int:
        """Index of the stage epoch ``epoch`` (1-based) belongs to."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        last = 0
        for index, stage in enumerate(self.stages):
            last += stage.epochs
            if epoch <= last:
                return index
        raise ValueError(f"epoch {epoch} is past the schedule's {self.epochs} epochs")

    def stage_at(self, epoch: int) -> Stage:
        return self.stages[self.index_at(epoch)]


@dataclass(frozen=True)
class Abilities:
    unconditional_generation: bool = True
    """``sample_prior`` exists: random coherence, prior PRD and prior sample grids apply."""
    log_likelihood: bool = True
    """``log_likelihood`` (an importance-sampled log p(X)) exists."""

    @property
    def refused_metrics(self) -> frozenset[str]:
        """Evaluation metrics (``mmplatform.evaluation.metrics``) this family cannot give: left out of
        a dataset's default metrics, refused when asked for by name."""
        return frozenset() if self.log_likelihood else frozenset({"log_likelihood"})

    def skipped_evaluations(self, family: str) -> dict[str, str]:
        """Evaluation results this family never produces -> why (written to the run, so that a
        missing value reads as "does not apply", never as 0)."""
        skipped = {}
        if not self.unconditional_generation:
            reason = f"{family} has no unconditional generation (its prior is data-dependent or absent)"
            skipped.update({"coherence/random": reason, "prd/random": reason, "samples/prior": reason})
        skipped.update({metric: f"{family} has no tractable log p(X)" for metric in self.refused_metrics})
        return skipped


@dataclass(frozen=True)
class ModelRequest:
    """Everything a family needs to build a model: the dataset's modalities and the shared model
    settings of the config (``mmplatform.config.ModelConfig``), resolved by the platform."""

    specs: Sequence[ModalitySpec]
    networks: Mapping[str, str]
    likelihood_options: Mapping[str, Mapping]
    latent_dim: int
    beta: float
    num_importance_samples: int = 1
    aggregator: str = "mopoe"
    aggregator_options: Mapping[str, Any] = field(default_factory=dict)
    style_latent_dim: int = 0
    style_beta: float | Mapping[str, float] = 1.0


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    summary: str
    build: Callable[[ModelRequest, Any], nn.Module]
    """``(request, options) -> model``."""
    stages: Callable[[Any, int], list[Stage]]
    """``(options, total epochs) -> stages`` summing to the total."""
    options: type[BaseModel] = NoOptions
    abilities: Abilities = Abilities()
    check: Callable[[ModelRequest | Any], None] | None = None
    """Refuses shared model settings the family cannot honour: ``ValueError`` naming the field."""

    def parse_options(self, options: Mapping[str, Any]) -> BaseModel:
        """``model.family_options`` as this family's typed options; ``ValueError`` naming the option."""
        return parse_typed_options(self.options, options, f"family {self.name}")

    def schedule(self, options: Mapping[str, Any], epochs: int) -> StageSchedule:
        """The stages of a training of ``epochs`` epochs; ``ValueError`` when a stage gets none."""
        stages = tuple(self.stages(self.parse_options(options), epochs))
        for stage in stages:
            if stage.epochs < 1:
                lengths = ", ".join(f"{s.name} {s.epochs}" for s in stages)
                raise ValueError(
                    f"family {self.name}: stage {stage.name!r} gets {stage.epochs} epochs of training.epochs "
                    f"{epochs} ({lengths}); give more epochs or change the stage lengths in model.family_options"
                )
        schedule = StageSchedule(stages)
        if schedule.epochs != epochs:
            raise ValueError(f"family {self.name}: stages cover {schedule.epochs} epochs, training.epochs is {epochs}")
        return schedule


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def model_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(FAMILIES)}")
    return FAMILIES[name]


class StagedModel(nn.Module):
    """Mixin of a model trained in stages: ``parameter_groups`` names disjoint submodules that
    together hold every parameter; ``set_stage`` trains some and freezes the others.

    A frozen group keeps ``requires_grad=False`` (the optimizer of the stage holds only the
    trained parameters, so frozen ones stay bitwise unchanged) and stays in eval mode even when
    the model is put in training mode, so its batch-norm statistics do not move either.
    """

    stage: str = ""

    def parameter_groups(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def set_stage(self, stage: Stage) -> None:
        groups = self.parameter_groups()
        trainable = set(groups) if stage.trainable is None else set(stage.trainable)
        unknown = sorted(trainable - set(groups))
        if unknown:
            raise ValueError(f"stage {stage.name!r} trains unknown parameter groups {unknown}; groups: {sorted(groups)}")
        grouped = [id(p) for module in groups.values() for p in module.parameters()]
        if len(grouped) != len(set(grouped)) or set(grouped) != {id(p) for p in self.parameters()}:
            raise ValueError(f"{type(self).__name__}.parameter_groups must hold every parameter exactly once")
        for name, module in groups.items():
            module.requires_grad_(name in trainable)
        self._frozen_groups = [name for name in groups if name not in trainable]
        self.stage = stage.name
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        groups = self.parameter_groups() if getattr(self, "_frozen_groups", None) else {}
        for name in getattr(self, "_frozen_groups", []):
            groups[name].eval()
        return self
