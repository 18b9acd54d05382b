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

Modality-specific (style) latents (optional, ``StyleLatent``): the latent is ``(z, w_1..w_M)``
with ``q(z, w | X) = q(z | X) prod_m q(w_m | x_m)`` and prior ``p(z) prod_m N(w_m; 0, I)``;
``x_m`` is decoded from ``[z, w_m]`` (mmJSD's factorized ELBO, seed 004 eq. 10; MoPoE's CelebA
runs, seed 001 eq. 34 and its ``factorized_representation`` code). Each style latent gets its
own weight ``beta_m``, applied like beta above:

    log w = sum_m lambda_m log p(x_m | z, w_m) + beta (log p(z) - log q(z | X))
            + sum_m beta_m (log N(w_m; 0, I) - log q(w_m | x_m))

so with beta = beta_m = 1 it is the IWAE bound on log p(X) under the factorized proposal.
With K = 1 and ``analytic_divergence`` the style term is the closed form
``- sum_m beta_m KL(q(w_m | x_m) || N(0, I))`` (seed 004 eq. 10); a single-sample log-weight is
additive, so it is combined with either form of the shared divergence. ``beta_m`` is the whole
weight of that KL: MoPoE's CelebA loss ``beta * beta_style * beta_m_style * KL_m`` corresponds
to ``beta_m = 2.5 * 2 * 1 = 5`` (image) and ``2.5 * 2 * 5 = 25`` (text).
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
    """Scalars for logging: ``bound``, ``divergence``, the extra losses by name, ``loss``."""

    modality_terms: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """Scalars per modality, by name: ``nll`` (negative log-likelihood per sample, mean over
    samples) and, with style latents, ``style_divergence`` (the closed-form KL of ``StyleLatent``,
    batch mean, unweighted like ``divergence``)."""

    def logged(self) -> dict[tuple[str, str], Tensor]:
        """Every logged scalar keyed by ``(name, modality)``, ``""`` for a term of the whole model
        (the name and the modality stay apart all the way to Aim's context)."""
        logged = {(name, ""): value for name, value in self.terms.items()}
        logged.update(((name, modality), value) for name, per_modality in self.modality_terms.items()
                      for modality, value in per_modality.items())
        return logged


@dataclass
class StyleLatent:
    """The style latent w_m of one modality present, at the samples decoded with ``z``."""

    kl: Tensor
    """``[B]`` closed-form KL(q(w_m | x_m) || N(0, I))."""

    log_ratio: Tensor
    """``[K, C, B]`` log N(w_m; 0, I) - log q(w_m | x_m) at the decoded samples."""

    beta: float = 1.0
    """Weight of this style latent's divergence (``beta_m`` in the module docstring)."""


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
    style_latents: Mapping[str, StyleLatent] | None = None,
) -> ObjectiveOutput:
    """The loss and its logged terms.

    Args:
        log_likelihoods: ``[K, C, B]`` log p(x_m | z) of every modality present.
        aggregation: the aggregator's output for the same ``z``.
        beta: weight of the divergence (see the module docstring for K > 1).
        reconstruction_weights: ``lambda_m`` per modality (default 1), e.g. the data-size
            ratios of seed 001 Appendix B.
        analytic_divergence: use the aggregator's closed-form divergence when K = 1 (and the
            closed-form style KLs).
        style_latents: the style latent of every modality present, by name (``None`` or empty:
            a model without style latents). ``log_likelihoods`` must then be log p(x_m | z, w_m).
    """
    weights = reconstruction_weights or {}
    reconstruction = sum(weights.get(name, 1.0) * value for name, value in log_likelihoods.items())
    num_samples = aggregation.z.shape[0]
    use_closed_form = analytic_divergence and num_samples == 1 and aggregation.divergence is not None
    style_latents = style_latents or {}
    # With one sample the log-weight is a sum, so the style KLs can be taken in closed form
    # whatever the shared divergence uses; with K > 1 they must sit inside the logmeanexp.
    style_closed_form = analytic_divergence and num_samples == 1
    if style_latents and not style_closed_form:
        style_log_weight = sum(style.beta * style.log_ratio for style in style_latents.values())
        reconstruction = reconstruction + style_log_weight

    log_prior = None
    if use_closed_form:
        divergence = aggregation.divergence
        bound = reconstruction[0] - beta * divergence
    else:
        log_prior = aggregation.log_prior if aggregation.log_prior is not None else standard_normal_log_prob(aggregation.z)
        divergence = (aggregation.log_q - log_prior).mean(0)
        bound = importance_weighted_bound(reconstruction, log_prior, aggregation.log_q, beta)
    if style_latents and style_closed_form:
        bound = bound - sum(style.beta * style.kl for style in style_latents.values())  # [B] over [C, B]

    loss = -bound.mean()
    terms: dict[str, Tensor] = {}
    for name, value in aggregation.extra_losses.items():
        loss = loss + value
        terms[name] = value.detach()
    terms["bound"] = bound.mean().detach()
    terms["divergence"] = divergence.mean().detach()
    modality_terms = {"nll": {name: -value.mean().detach() for name, value in log_likelihoods.items()}}
    if style_latents:
        modality_terms["style_divergence"] = {name: style.kl.mean().detach() for name, style in style_latents.items()}
    terms["loss"] = loss.detach()
    return ObjectiveOutput(loss=loss, terms=terms, modality_terms=modality_terms)
