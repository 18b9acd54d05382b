"""Decoder likelihoods p(x_m | z), by the name a ``ModalitySpec.likelihood`` carries.

A likelihood turns decoder outputs ("params") into a log-density of the observed batch and
into the point output used for generation. ``log_prob(params, target)`` broadcasts params
``[*lead, B, *event]`` against the target ``[B, *event]`` and sums over the event dimensions
(``target.dim() - 1`` trailing dims; for categorical the vocabulary axis of the params is extra).

* ``laplace``: location = decoder output, fixed scale 0.75 (MoPoE / MultiVae PolyMNIST setup,
  anchors-mmvae 4.1); generation = location clamped to [0, 1].
* ``gaussian``: mean = decoder output, fixed scale (default 1.0); generation clamped to [0, 1].
* ``bernoulli``: decoder output = logits; generation = sigmoid(logits).
* ``categorical``: decoder output = logits ``[..., L, V]`` over the vocabulary, target ids
  ``[B, L]``; generation = argmax ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class Likelihood:
    name: str

    def log_prob(self, params: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError


LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {}


def register_likelihood(cls):
    LIKELIHOODS[cls.name] = cls
    return cls


def build_likelihood(name: str, **options) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; registered: {', '.join(sorted(LIKELIHOODS))}")
    return LIKELIHOODS[name](**options)


def _sum_event(values: Tensor, event_dims: int) -> Tensor:
    return values.sum(dim=tuple(range(-event_dims, 0))) if event_dims else values


@register_likelihood
class LaplaceLikelihood(Likelihood):
    name = "laplace"

    def __init__(self, scale: float = 0.75) -> None:
        self.scale = scale

    def log_prob(self, params: Tensor, target: Tensor) -> Tensor:
        event_dims = target.dim() - 1
        # The normalizer is the same for every element: add it once per sample.
        num_elements = math.prod(target.shape[1:])
        distance = _sum_event((params - target).abs(), event_dims)
        return -distance / self.scale - num_elements * math.log(2.0 * self.scale)

    def mean(self, params: Tensor) -> Tensor:
        return params.clamp(0.0, 1.0)


@register_likelihood
class GaussianLikelihood(Likelihood):
    name = "gaussian"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def log_prob(self, params: Tensor, target: Tensor) -> Tensor:
        event_dims = target.dim() - 1
        num_elements = math.prod(target.shape[1:])
        squared = _sum_event((params - target).square(), event_dims)
        return -0.5 * squared / self.scale**2 - num_elements * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))

    def mean(self, params: Tensor) -> Tensor:
        return params.clamp(0.0, 1.0)


@register_likelihood
class BernoulliLikelihood(Likelihood):
    name = "bernoulli"

    def log_prob(self, params: Tensor, target: Tensor) -> Tensor:
        values = -F.binary_cross_entropy_with_logits(params, target.expand_as(params), reduction="none")
        return _sum_event(values, target.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


@register_likelihood
class CategoricalLikelihood(Likelihood):
    name = "categorical"

    def log_prob(self, params: Tensor, target: Tensor) -> Tensor:
        log_probs = torch.log_softmax(params, dim=-1)
        ids = target.long().expand(params.shape[:-1]).unsqueeze(-1)
        return _sum_event(log_probs.gather(-1, ids).squeeze(-1), target.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(-1)
