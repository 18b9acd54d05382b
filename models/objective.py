"""The objective shared by every aggregator: reconstruction, beta-weighted divergence, K samples.

For latent samples ``z [K, C, B, D]`` drawn from the aggregator's posterior with log-density
``log_q [K, C, B]``, the per-sample log-weight is

    log w = sum_m lambda_m log p(x_m | z) + beta * (log p(z) - log q(z))

and the bound is ``logmeanexp_k log w`` (IWAE, thesis eq. 3.12; MMVAE's mixture form eq. 3.13
when ``C`` > 1), averaged over components ``C`` and the batch.

Beta convention: beta multiplies the whole log-density ratio inside the importance weight, as
MMVAE_Hub's iw models do. With beta = 1 it is the IWAE bound on log p(X); for K = 1 its
expectation is the beta-ELBO of thesis eq. 3.2. For beta != 1 and K > 1 it is a tempered bound,
not a bound on log p(X) (``MultimodalVAE.log_likelihood`` always uses beta = 1).

With K = 1 and a closed-form divergence from the aggregator the estimator is the analytic
beta-ELBO ``recon - beta * divergence`` (thesis eq. 3.2, 3.8; seed 004 eq. 5), which has lower
variance than the single-sample Monte Carlo KL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.aggregators.base import Aggregation
from models.distributions import standard_normal_log_prob


@dataclass
class ObjectiveOutput:
    loss: Tensor
    """Scalar to minimize: the negative bound (batch mean) plus the aggregator's extra losses."""

    terms: dict[str, Tensor] = field(default_factory=dict)
    """Scalars for logging: ``bound``, ``divergence``, ``nll/<modality>`` (negative
    log-likelihood per sample, mean over samples), the extra losses by name, ``loss``."""


def logmeanexp(values: Tensor, dim: int) -> Tensor:
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def importance_weighted_bound(log_likelihood: Tensor, log_prior: Tensor, log_q: Tensor, beta: float = 1.0) -> Tensor:
    """``[C, B]`` logmeanexp over K of ``log p(x|z) + beta (log p(z) - log q(z))`` (all ``[K, C, B]``)."""
    return logmeanexp(log_likelihood + beta * (log_prior - log_q), dim=0)


def multimodal_objective(
    log_likelihoods: Mapping[str, Tensor],
    aggregation: Aggregation,
    beta: float = 1.0,
    reconstruction_weights: Mapping[str, float] | None = None,
    analytic_divergence: bool = True,
) -> ObjectiveOutput:
    """The loss and its logged terms.

    Args:
        log_likelihoods: ``[K, C, B]`` log p(x_m | z) of every modality present.
        aggregation: the aggregator's output for the same ``z``.
        beta: weight of the divergence (see the module docstring for K > 1).
        reconstruction_weights: ``lambda_m`` per modality (default 1), e.g. the data-size
            ratios of seed 001 Appendix B.
        analytic_divergence: use the aggregator's closed-form divergence when K = 1.
    """
    weights = reconstruction_weights or {}
    reconstruction = sum(weights.get(name, 1.0) * value for name, value in log_likelihoods.items())
    num_samples = aggregation.z.shape[0]
    use_closed_form = analytic_divergence and num_samples == 1 and aggregation.divergence is not None

    log_prior = None
    if use_closed_form:
        divergence = aggregation.divergence
        bound = reconstruction[0] - beta * divergence
    else:
        log_prior = aggregation.log_prior if aggregation.log_prior is not None else standard_normal_log_prob(aggregation.z)
        divergence = (aggregation.log_q - log_prior).mean(0)
        bound = importance_weighted_bound(reconstruction, log_prior, aggregation.log_q, beta)

    loss = -bound.mean()
    terms: dict[str, Tensor] = {}
    for name, value in aggregation.extra_losses.items():
        loss = loss + value
        terms[name] = value.detach()
    terms["bound"] = bound.mean().detach()
    terms["divergence"] = divergence.mean().detach()
    for name, value in log_likelihoods.items():
        terms[f"nll/{name}"] = -value.mean().detach()
    terms["loss"] = loss.detach()
    return ObjectiveOutput(loss=loss, terms=terms)
