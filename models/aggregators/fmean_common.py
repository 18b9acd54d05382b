"""Pieces shared by the learnable f-mean aggregators (thesis, seed 000, ch. 4).

* ``FlowOptions``: the JSON options every f-mean aggregator takes to build its flow(s) (``flow_backend``, ``num_flows``, ``coupling_layers``,
  ``coupling_width``, ``clamp``: the names of ``models.flows.build_flow``, Table 5.1 names there).
* ``UNIMODAL_FAMILIES``: how an encoder's ``(mu, logvar)`` becomes a unimodal posterior
  for the sample-based models. ``gaussian`` (default, the platform's encoders) or
  ``laplace`` with the same mean and variance (``b = sqrt(var / 2)``), the family of the
  thesis code (``--qz_x laplace``, anchors-mmvae 3.2).
* ``FMeanSamplePosterior``: the sample-based subset posterior of MoGfM (amortized) and
  iwMoGfM, ``q~(z | X_s) = f^-1(Q_s)`` with ``Q_s = (1/|X_s|) sum_m f(z_m)``,
  ``z_m ~ q(z | x_m)`` (eq. 4.17, eq. 4.20), whose f-space density is approximated by a
  Gaussian chosen from ``FSPACE_DENSITIES`` (``amortized``: eq. 4.13; ``proxy``: the
  importance-sample fit of §4.3.4).

Density by change of variables (eq. 3.11): with ``z_s = f^-1(y_s)``,
``log q~(z_s) = log Q~_s(y_s) - log|det J_{f^-1}(y_s)|``. (Eq. 4.21 prints
``+ log det J_{f^-1}``; change of variables gives the minus sign, equivalently
``+ log|det J_f(z_s)|``, which is what is implemented.)

The ``proxy`` is a diagonal Gaussian (per-dimension mean and variance, as in the thesis
code): correlations that ``f`` itself introduces between dimensions (e.g. the rotations of
FrEIA's AllInOneBlock) are not represented, so even for a linear ``f`` it is exact only when
``f`` keeps a diagonal covariance diagonal (element-wise affine maps and permutations). The
``amortized`` density is isotropic by assumption (eq. 4.12), which L_2 enforces.

``neutralize_unused_experts`` replaces the placeholders of missing modalities before any
sum over modalities (every f-mean aggregator calls it).

Unimodal subsets: the f-mean of a single expert is the expert itself
(``f^-1(f(z_m)) = z_m``), so for rows with one modality the sample is ``z_m`` and its density
is the exact ``log q(z_m | x_m)``; the Gaussian approximation is only used for ``|X_s| >= 2``
(as in the thesis code, anchors-mmvae 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from models.distributions import LOG_2PI, DiagonalGaussian, DiagonalLaplace
from models.flows import Flow, build_flow
from models.fmean import fmean, fmean_full, normalized_weights, weighted_sum


@dataclass(frozen=True)
class FlowOptions:
    flow_backend: str = "freia_allinone"
    num_flows: int = 1
    coupling_layers: int = 8
    coupling_width: int = 64
    clamp: float = 2.0

    def build(self, latent_dim: int) -> Flow:
        # One set of names from the config to the flow: the fields are build_flow's arguments.
        return build_flow(self.flow_backend, latent_dim, num_flows=self.num_flows, coupling_layers=self.coupling_layers,
                          coupling_width=self.coupling_width, clamp=self.clamp)


def _laplace_same_moments(mu: Tensor, logvar: Tensor) -> DiagonalLaplace:
    # Laplace(b) has variance 2 b^2: keep the encoder's "logvar" meaning the variance.
    return DiagonalLaplace(mu, 0.5 * (logvar - math.log(2.0)))


UNIMODAL_FAMILIES: dict[str, Callable[[Tensor, Tensor], DiagonalGaussian | DiagonalLaplace]] = {
    "gaussian": DiagonalGaussian,
    "laplace": _laplace_same_moments,
}


def unimodal_family(name: str) -> Callable[[Tensor, Tensor], DiagonalGaussian | DiagonalLaplace]:
    if name not in UNIMODAL_FAMILIES:
        raise ValueError(f"unknown unimodal family {name!r}; registered: {', '.join(sorted(UNIMODAL_FAMILIES))}")
    return UNIMODAL_FAMILIES[name]


def neutralize_unused_experts(mu: Tensor, logvar: Tensor, subsets: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the parameters of experts no row of ``subsets`` uses by N(0, I).

    Missing modalities arrive as placeholders; anything non-finite there would reach the
    sums over modalities as ``0 * NaN`` (and the flows' parameter gradients), so they are
    made harmless before any arithmetic.
    """
    used = subsets.any(0).reshape(-1, 1, 1)
    return torch.where(used, mu, torch.zeros_like(mu)), torch.where(used, logvar, torch.zeros_like(logvar))


def diagonal_normal_log_prob(y: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """log N(y; mean, diag(variance)) summed over the last dimension (broadcasting)."""
    return -0.5 * ((y - mean).square() / variance + variance.log() + LOG_2PI).sum(-1)


@dataclass
class FMeanDraw:
    """One draw of the sample-based f-mean for all subsets (``K`` samples)."""

    z: Tensor
    """``[K, S, B, D]`` subset samples ``f^-1(Q_s)`` (``z_m`` itself for unimodal rows)."""

    log_q: Tensor
    """``[K, S, B]`` their (approximate, exact for unimodal rows) log-density."""

    unimodal_samples: Tensor
    """``[K, M, B, D]`` the experts' samples ``z_m``."""

    unimodal_log_q: Tensor
    """``[K, M, B]`` ``log q(z_m | x_m)``."""

    transformed: Tensor
    """``[K, M, B, D]`` ``f(z_m)``."""

    log_det_forward: Tensor
    """``[K, M, B]`` ``log|det J_f(z_m)|``."""


# An f-space density: (posterior, f-space means y_s [S, K, B, D], weights [S, M],
# fitting samples f(z_m) [M, K', B, D]) -> log Q~_s(y_s) [S, K, B].
FSpaceDensity = Callable[["FMeanSamplePosterior", Tensor, Tensor, Tensor], Tensor]
FSPACE_DENSITIES: dict[str, FSpaceDensity] = {}


def register_fspace_density(name: str) -> Callable[[FSpaceDensity], FSpaceDensity]:
    def register(fn: FSpaceDensity) -> FSpaceDensity:
        FSPACE_DENSITIES[name] = fn
        return fn

    return register


@register_fspace_density("amortized")
def amortized_density(posterior: "FMeanSamplePosterior", mean_y: Tensor, weights: Tensor, fit_y: Tensor) -> Tensor:
    """Eq. 4.13: ``Q_s ~ N(sum_m w_sm f(mu_m), sum_m w_sm^2 I)``.

    Each flowed expert is assumed ``N(f(mu_m), I)`` (eq. 4.12, enforced by the loss L_2 of
    eq. 4.14); a weighted sum of independent unit Gaussians has variance ``sum_m w_sm^2``,
    ``1/|X_s|`` for uniform weights, i.e. standard deviation ``1/sqrt(|X_s|)`` (the
    ``1/sqrt(|X_s|) I`` printed in eq. 4.13 is this standard deviation).
    """
    centre = weighted_sum(weights, posterior.flowed_means())  # [S, B, D]
    variance = weights.square().sum(-1).reshape(-1, 1, 1, 1).to(mean_y.dtype)  # [S, 1, 1, 1]
    return diagonal_normal_log_prob(mean_y, centre.unsqueeze(1), variance)


PROXY_MIN_VARIANCE = 1e-6


@register_fspace_density("proxy")
def proxy_density(posterior: "FMeanSamplePosterior", mean_y: Tensor, weights: Tensor, fit_y: Tensor) -> Tensor:
    """§4.3.4 / eq. 4.21: a Gaussian ``Q~_s`` with moments estimated from importance samples.

    ``fit_y`` ``[M, K', B, D]`` are ``K' >= 2`` samples ``f(z_m)`` per expert. The mean of
    ``Q_s = sum_m w_sm f(z_m)`` is estimated by ``sum_m w_sm mean_k f(z_m^k)`` and, because the
    experts are sampled independently, its variance by ``sum_m w_sm^2 var_k f(z_m^k)``: the
    same moments as fitting the ``K'`` draws of ``Q_s`` directly (the thesis' description)
    in expectation, from ``|X_s|`` times as many degrees of freedom. The fit is not detached:
    the gradient through the fitted variance is the entropy term of the divergence.
    """
    expert_mean = fit_y.mean(1)  # [M, B, D]
    expert_variance = fit_y.var(1, correction=1)
    centre = weighted_sum(weights, expert_mean)
    variance = weighted_sum(weights.square(), expert_variance) + PROXY_MIN_VARIANCE
    return diagonal_normal_log_prob(mean_y, centre.unsqueeze(1), variance.unsqueeze(1))


class FMeanSamplePosterior:
    """``q~(z | X_s) = f^-1((1/|X_s|) sum_m f(z_m))`` for every row of ``subsets``.

    Satisfies ``SubsetPosterior``. ``mean`` is the f-mean of the experts' means,
    ``f^-1(mean_m f(mu_m))`` (eq. 4.1 on the location parameters): the point embedding used by
    latent probes, not the expectation of ``q~`` (which has no closed form).
    """

    def __init__(
        self,
        experts: DiagonalGaussian | DiagonalLaplace,
        subsets: Tensor,
        flow: Flow,
        density: str,
        min_fit_samples: int = 0,
    ) -> None:
        if density not in FSPACE_DENSITIES:
            raise ValueError(f"unknown f-space density {density!r}; registered: {', '.join(sorted(FSPACE_DENSITIES))}")
        self.experts = experts
        self.subsets = subsets
        self.flow = flow
        self.density = FSPACE_DENSITIES[density]
        self.min_fit_samples = min_fit_samples
        self._flowed_means: Tensor | None = None

    @property
    def weights(self) -> Tensor:
        return normalized_weights(self.subsets, self.experts.mean.dtype)

    def flowed_means(self) -> Tensor:
        """``[M, B, D]`` ``f(mu_m)`` (computed once per posterior)."""
        if self._flowed_means is None:
            self._flowed_means = self.flow(self.experts.mean)[0]
        return self._flowed_means

    @property
    def mean(self) -> Tensor:
        return fmean(self.experts.mean, self.subsets, self.flow)

    def draw(self, num_samples: int) -> FMeanDraw:
        """``K`` samples per subset; ``max(K, min_fit_samples)`` are drawn to fit densities.

        Only the multimodal rows' f-means of the first ``K`` samples go through ``f^-1``: the
        unimodal rows are replaced by the experts themselves and the extra fitting samples
        only enter through ``f(z_m)``, so inverting them would be discarded work.
        """
        total = max(num_samples, self.min_fit_samples)
        samples, log_q_experts = self.experts.rsample_with_log_prob(total)  # [K', M, B, D], [K', M, B]
        weights = self.weights
        keep = slice(0, num_samples)
        multimodal = torch.nonzero(self.subsets.sum(-1) > 1).squeeze(-1)  # rows needing f^-1
        result = fmean_full(samples.transpose(0, 1), self.subsets, self.flow, invert_index=(multimodal, keep))
        # result.value / log_det_inverse: [S_multi, K, B, D] / [S_multi, K, B]

        # Unimodal rows: the f-mean is the expert itself, with its exact density.
        one_hot = self.subsets.to(samples.dtype)
        expert_z = weighted_sum(one_hot, samples[keep].transpose(0, 1))  # [S, K, B, D] (exact on unimodal rows)
        expert_log_q = weighted_sum(one_hot, log_q_experts[keep].transpose(0, 1))  # [S, K, B]
        if multimodal.numel() > 0:
            mean_y = result.mean_transformed[multimodal, keep]  # [S_multi, K, B, D]
            log_q_fspace = self.density(self, mean_y, weights[multimodal], result.transformed)
            z = expert_z.index_copy(0, multimodal, result.value)
            log_q = expert_log_q.index_copy(0, multimodal, log_q_fspace - result.log_det_inverse)
        else:
            z, log_q = expert_z, expert_log_q
        return FMeanDraw(
            z=z.transpose(0, 1),
            log_q=log_q.transpose(0, 1),
            unimodal_samples=samples[keep],
            unimodal_log_q=log_q_experts[keep],
            transformed=result.transformed[:, keep].transpose(0, 1),
            log_det_forward=result.log_det_forward[:, keep].transpose(0, 1),
        )

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        draw = self.draw(num_samples)
        return draw.z, draw.log_q
