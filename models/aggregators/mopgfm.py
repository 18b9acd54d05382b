"""MoPGfM: Gaussian subset posteriors from f-means of the experts' parameters (seed 000 §4.3.2).

Eq. 4.6: the posterior of subset ``X_s`` is

    ``N( f_mu^-1( (1/|X_s|) sum_m f_mu(mu_m) ),  f_sigma^-1( (1/|X_s|) sum_m f_sigma(sigma_m^2) ) )``

with two learned flows on ``R^D``; the joint is the uniform mixture over the ``2^M - 1``
subsets (MoPoE style), sampled by component selection with the exact mixture density as
``log_q`` (MMVAE-style, as the thesis code). Divergence: the average over subsets of the
closed-form ``KL(N_s || N(0, I))``, the MoPoE upper bound of the mixture's KL (thesis eq. 3.8).

How ``f_sigma`` is parameterized (``variance_domain`` option). A flow ``g`` on ``R^D`` is
composed with a fixed positive-to-real map ``h``: ``f_sigma = g o h``, so
``f_sigma^-1 = h^-1 o g^-1``:

``log`` (default)
    ``h = log``: the f-mean is taken over log-variances. Any ``g`` yields a positive
    variance. With ``g`` the identity this is the geometric mean of the variances (the
    average of the log-variances, what the thesis code computed).
``variance``
    ``h`` = identity, eq. 4.6 literally: identity ``g`` gives the arithmetic mean of the
    variances.
``precision``
    ``h(v) = 1/v``: identity ``g`` gives the harmonic mean of the variances.

For ``variance`` and ``precision`` a learned coupling flow ``g`` is not monotone per
dimension, so ``h^-1(g^-1(.))`` may leave ``(0, inf)``; the result is floored at
``MIN_VARIANCE`` (no gradient through floored entries). ``log`` never needs the floor.

What it can and cannot represent (the thesis calls it a generalization of the PoE; it is not
one exactly):

* Means. ``f_mu`` acts on the means alone, so the subset mean is a function of
  ``(mu_m)_m`` only. The PoE mean ``sum_m mu_m / var_m / sum_m 1 / var_m`` is a
  precision-weighted mean: it depends jointly on means and variances, which no ``f_mu`` can
  reproduce for all inputs. The two agree when the experts' variances are equal (the PoE
  mean is then the arithmetic mean, which identity ``f_mu`` gives).
* Variances. Any f-mean of identical values returns that value, so a subset of ``n``
  identical experts gets the experts' variance, while the PoE gives ``var / n``: the
  variance shrinkage of the PoE (more modalities, more certainty) is out of reach. The
  closest fixed choice is ``precision`` with identity ``g``: the harmonic mean
  ``n / sum_m 1 / var_m``, exactly ``n`` times the PoE variance (experts alone, no prior).
* The family is Gaussian per subset (closed-form KL), less expressive than MoFoP.

Log-likelihood: ``log_q`` is the exact density of the joint mixture proposal, so the
importance-sampled log-likelihood is the usual consistent estimate of ``log p(X)``.
Unimodal family: Gaussian only (closed-form KL of eq. 4.6's Gaussians).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, check_choice, register_aggregator
from models.aggregators.fmean_common import FlowOptions, neutralize_unused_experts
from models.aggregators.mixture import (
    COMPONENT_SELECTIONS,
    DEFAULT_COMPONENT_SELECTION,
    ComponentSelection,
    GaussianMixture,
    training_selection,
)
from models.distributions import DiagonalGaussian
from models.fmean import fmean

MIN_VARIANCE = 1e-8

# name -> (log-variance -> domain value, domain value -> log-variance)
VARIANCE_DOMAINS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "log": (lambda logvar: logvar, lambda y: y),
    "variance": (torch.exp, lambda v: v.clamp_min(MIN_VARIANCE).log()),
    "precision": (lambda logvar: (-logvar).exp(), lambda p: -p.clamp_min(MIN_VARIANCE).log()),
}


@register_aggregator
class MoPGfMAggregator(Aggregator):
    """Options: ``flow_backend``, ``num_flows`` (1), ``coupling_layers`` (8),
    ``coupling_width`` (64), ``clamp`` (2.0) — Table 5.1 defaults, used for both ``f_mu``
    and ``f_sigma`` — ``variance_domain`` (``log``) and ``component_selection`` (how a training
    sample's subset is chosen, ``mixture.ComponentSelection``; default
    ``mixture.DEFAULT_COMPONENT_SELECTION``)."""

    name = "mopgfm"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        flow_backend: str = "freia_allinone",
        num_flows: int = 1,
        coupling_layers: int = 8,
        coupling_width: int = 64,
        clamp: float = 2.0,
        variance_domain: str = "log",
        component_selection: ComponentSelection = DEFAULT_COMPONENT_SELECTION,
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        check_choice("component_selection", component_selection, COMPONENT_SELECTIONS)
        self.component_selection = component_selection
        if variance_domain not in VARIANCE_DOMAINS:
            raise ValueError(f"unknown variance_domain {variance_domain!r}; choose from {sorted(VARIANCE_DOMAINS)}")
        options = FlowOptions(flow_backend, num_flows, coupling_layers, coupling_width, clamp)
        self.flow_mu = options.build(latent_dim)
        self.flow_sigma = options.build(latent_dim)
        self.variance_domain = variance_domain

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        """Eq. 4.6 for every row of ``subsets``: ``DiagonalGaussian`` with batch ``[S, B]``."""
        to_domain, from_domain = VARIANCE_DOMAINS[self.variance_domain]
        mu, logvar = neutralize_unused_experts(mu, logvar, subsets)
        subset_mu = fmean(mu, subsets, self.flow_mu)
        subset_logvar = from_domain(fmean(to_domain(logvar), subsets, self.flow_sigma))
        return DiagonalGaussian(subset_mu, subset_logvar)

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        posteriors = self.subset_posteriors(mu, logvar, subsets)
        num_subsets = subsets.shape[0]
        weights = torch.full((1, num_subsets), 1.0 / num_subsets, dtype=mu.dtype, device=mu.device)
        selection = training_selection(self, self.component_selection)
        z, log_q = GaussianMixture(posteriors, weights).rsample_with_log_prob(num_samples, selection)
        divergence = posteriors.kl_standard_normal().mean(0, keepdim=True)
        return Aggregation(z=z, log_q=log_q, subset_posteriors=posteriors, divergence=divergence)
