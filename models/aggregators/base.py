"""The aggregator interface: unimodal posteriors in, subset and joint posteriors out.

An aggregator decides how the experts q(z|x_m) of the modalities present are fused. It
sees all subsets at once: unimodal parameters are ``[M, B, D]`` tensors and the subsets are
a boolean mask ``[S, M]`` (``models.subsets``); nothing loops over subsets in Python.

The objective (reconstruction, beta-weighted divergence, K importance samples) lives in
``models.objective`` and is shared by every aggregator; an aggregator only says

* which latent samples are decoded (``Aggregation.z``) and their log-density under the
  posterior they were drawn from (``Aggregation.log_q``), for the importance-weighted bound;
* its closed-form (or bounded) divergence to the prior when it has one
  (``Aggregation.divergence``), used for the K = 1 ELBO instead of a Monte Carlo estimate;
* any extra loss terms it brings (``Aggregation.extra_losses``), e.g. the amortized prior
  loss of MoGfM (thesis, seed 000, eq. 4.17).

Registered names are the ones configs and sweeps use: ``poe``, ``moe``, ``mopoe``,
``mmjsd`` (fixed fusion) and ``mofop``, ``mopgfm``, ``mogfm_amortized``, ``iwmogfm``
(learnable f-means).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, create_model
from torch import Tensor, nn

from models.options import parse_typed_options


class SubsetPosterior(Protocol):
    """A batch of posteriors, one per (subset, sample): batch shape ``[S, B]``, event ``[D]``.

    ``DiagonalGaussian`` satisfies it; flow aggregators return their own (a flowed
    Gaussian, a proxy density).
    """

    @property
    def mean(self) -> Tensor:
        """``[S, B, D]``: the point embedding used by latent probes."""

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """Reparameterized samples ``[K, S, B, D]`` and their log-density ``[K, S, B]``."""


@dataclass
class Aggregation:
    """What the shared objective needs from an aggregator for one batch.

    ``C`` is the number of posterior "components" whose samples are decoded: 1 for a joint
    posterior (PoE, or a mixture sampled by component selection as in MoE/MoPoE), ``S``
    when every subset reconstructs (the importance-weighted f-mean models of seed 000).
    """

    z: Tensor
    """``[K, C, B, D]`` latent samples to decode (reparameterized)."""

    log_q: Tensor
    """``[K, C, B]``: log-density of ``z`` under the posterior it was drawn from.

    May be passed as a zero-argument callable returning that tensor: it is then evaluated
    on first read (and cached), so that the K = 1 closed-form ELBO never pays for a mixture
    density it does not use. Readers always get a ``Tensor``."""

    subset_posteriors: SubsetPosterior
    """Posteriors of every subset in the mask, batch shape ``[S, B]``."""

    divergence: Tensor | None = None
    """``[C, B]`` closed-form (or upper-bound) divergence to the prior, or ``None`` when
    only the Monte Carlo estimate ``log_q - log p(z)`` exists."""

    log_prior: Tensor | None = None
    """``[K, C, B]`` log p(z) when the aggregator's prior is not the standard normal
    (e.g. a learned or dynamic prior); ``None`` means N(0, I)."""

    extra_losses: dict[str, Tensor] = field(default_factory=dict)
    """Scalar loss terms added to the negative bound, by name (logged under that name)."""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name == "log_q" and callable(value):  # a deferred log_q (Tensors are not callable)
            value = value()
            object.__setattr__(self, "log_q", value)
        return value


class Aggregator(nn.Module):
    """Base class: fuse unimodal posteriors ``(mu, logvar)`` of shape ``[M, B, D]``.

    Subclasses set ``name`` and implement ``subset_posteriors`` and ``forward``. Options
    come as keyword arguments from the model config and must be JSON-serializable so that
    they can be logged as hparams.
    """

    name: ClassVar[str]

    def __init__(self, num_modalities: int, latent_dim: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.latent_dim = latent_dim

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> SubsetPosterior:
        """Posteriors q(z | X_s) for every subset ``s`` (row of ``subsets``, ``[S, M]``)."""
        raise NotImplementedError

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        """Everything the objective needs, with ``num_samples`` (K) importance samples."""
        raise NotImplementedError


AGGREGATORS: dict[str, type[Aggregator]] = {}


def register_aggregator(cls: type[Aggregator]) -> type[Aggregator]:
    """Class decorator: make ``cls`` buildable by its ``name`` from configs."""
    if cls.name in AGGREGATORS:
        raise ValueError(f"aggregator {cls.name!r} registered twice")
    AGGREGATORS[cls.name] = cls
    return cls


def build_aggregator(name: str, num_modalities: int, latent_dim: int, **options) -> Aggregator:
    if name not in AGGREGATORS:
        known = ", ".join(sorted(AGGREGATORS))
        raise ValueError(f"unknown aggregator {name!r}; registered: {known}")
    return AGGREGATORS[name](num_modalities=num_modalities, latent_dim=latent_dim, **options)


_STRUCTURAL = ("self", "num_modalities", "latent_dim")
"""Constructor arguments that come from the model, not from ``aggregator_options``."""


@functools.cache
def options_model(name: str) -> type[BaseModel]:
    """The typed options of aggregator ``name``: one pydantic model per aggregator, derived from
    its constructor's annotated keyword arguments and defaults (so each option and its default
    is written once, in the aggregator). Unknown keys are errors."""
    cls = AGGREGATORS[name]
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name in _STRUCTURAL or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"), **fields)


def validate_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against aggregator ``name``'s typed options, with the values as typed
    (a YAML ``2`` for a float field becomes ``2.0``); only the given keys are returned.

    Raises ``ValueError`` whose lines each name the option, what is wrong and the value given."""
    validated = parse_typed_options(options_model(name), options, name)
    return {key: getattr(validated, key) for key in options}


PriorExpert = Literal["none", "full_set", "all_subsets"]
"""Where an aggregator that forms products of experts puts N(0, I) as one more expert
(option ``prior_expert``, a string so that it is logged as an hparam):

* ``none``: in no product, as the equations (seed 001 Definition 1; thesis eq. 3.3, 3.7);
* ``full_set``: only in the product of the subset that holds *every* modality of the model, as
  the MoPoE code (``poe_fusion`` adds it when the subset has all modalities) and MultiVae's
  MoPoE. A batch with missing modalities has no such row, so none of its rows gets it: a
  subset's posterior never depends on which other modalities are present;
* ``all_subsets``: in every subset's product, as MMVAE_Hub's ``modality_poe`` flag (and the
  MVAE code's PoE).
"""

PRIOR_EXPERT_MODES: tuple[str, ...] = typing.get_args(PriorExpert)


def check_choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``allowed`` (constructors called without
    ``validate_options``, e.g. from tests, get the same refusal as configs)."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{option} must be one of {choices}, got {value!r}")


def prior_expert_weights(mode: str, subsets: Tensor, dtype: torch.dtype) -> Tensor | None:
    """``[S]`` power of the prior expert in each row of ``subsets`` ``[S, M]`` (the
    ``prior_weight`` of ``distributions.product_of_experts``), or ``None`` for ``none``."""
    check_choice("prior_expert", mode, PRIOR_EXPERT_MODES)
    if mode == "none":
        return None
    if mode == "all_subsets":
        return torch.ones(subsets.shape[0], dtype=dtype, device=subsets.device)
    return (subsets != 0).all(-1).to(dtype)  # full_set: the row holding every modality of the model


def subset_sizes(subsets: Tensor) -> Tensor:
    """``[S]`` number of modalities in each subset (float, for averaging)."""
    return subsets.sum(dim=-1).to(torch.get_default_dtype())
