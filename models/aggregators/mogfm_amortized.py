"""MoGfM (amortized): f-mean of flowed expert samples with an amortized prior (seed 000 §4.3.3).

Subset posterior (eq. 4.17): ``q~(z | X_s) = f^-1(G_f)``, ``G_f = (1/|X_s|) sum_m f(z_m)``,
``z_m ~ q(z | x_m)``, for every subset (row of the mask) at once; one flow ``f`` shared by
all modalities. The density of ``G_f`` is taken as Gaussian (eq. 4.13),
``N((1/|X_s|) sum_m f(mu_m), (1/|X_s|) I)`` (variance ``1/|X_s|``), which holds when every
flowed expert is ``N(f(mu_m), I)`` (eq. 4.12). The extra loss ``L_2`` of eq. 4.14 pushes the
flow towards that:

    ``L_2 = sum_m KL(f(q_m) || N(f(mu_m), I))
          ~ sum_m E_{z_m ~ q_m}[log q_m(z_m) - log|det J_f(z_m)| - log N(f(z_m); f(mu_m), I)]``

estimated with the same ``K`` expert samples that build the subsets, averaged over samples
and batch, summed over the modalities present; it enters the loss as
``extra_losses["amortized_prior"] = amortized_prior_weight * L_2`` (eq. 4.16 adds ``L_2``
to ``L_1``; the thesis code weighs it by 2.0, anchors-mmvae 3.2, our default).

``log q~(z_s) = log N(y_s; ...) - log|det J_{f^-1}(y_s)|`` with ``y_s = G_f`` (change of
variables; see ``fmean_common``), exact for unimodal rows. Every subset reconstructs:
``C = S`` (``z [K, S, B, D]``), so the shared objective averages the per-subset IW bounds
(eq. 4.15 / 4.18) as in the thesis code; no closed-form divergence (``divergence=None``),
the objective uses the Monte Carlo ``log q - log p``. The thesis trains it with beta = 0
(§5.5.1) — a config choice, not an option here.

Log-likelihood: ``log_q`` is the *assumed* density of eq. 4.13, exact only where L_2 = 0
(and on unimodal rows). ``MultimodalVAE.log_likelihood`` with this proposal therefore
estimates the importance-weighted bound under the approximate density, not a consistent
estimate (nor a guaranteed bound) of ``log p(X)``; compare it across models with care.

Options: ``flow_backend``, ``num_flows`` (4), ``coupling_layers`` (2), ``coupling_width``
(512), ``clamp`` (2.0) — Table 5.1 — ``amortized_prior_weight`` (2.0), ``unimodal``
(``gaussian`` | ``laplace``, see ``fmean_common.UNIMODAL_FAMILIES``).
"""

from __future__ import annotations

from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, register_aggregator
from models.aggregators.fmean_common import FlowOptions, FMeanSamplePosterior, neutralize_unused_experts, unimodal_family
from models.distributions import standard_normal_log_prob


@register_aggregator
class MoGfMAmortizedAggregator(Aggregator):
    name = "mogfm_amortized"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        flow_backend: str = "freia_allinone",
        num_flows: int = 4,
        coupling_layers: int = 2,
        coupling_width: int = 512,
        clamp: float = 2.0,
        amortized_prior_weight: float = 2.0,
        unimodal: str = "gaussian",
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        self.flow = FlowOptions(flow_backend, num_flows, coupling_layers, coupling_width, clamp).build(latent_dim)
        self.amortized_prior_weight = amortized_prior_weight
        self.unimodal = unimodal
        self._family = unimodal_family(unimodal)

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> FMeanSamplePosterior:
        mu, logvar = neutralize_unused_experts(mu, logvar, subsets)
        return FMeanSamplePosterior(self._family(mu, logvar), subsets, self.flow, density="amortized")

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        posterior = self.subset_posteriors(mu, logvar, subsets)
        draw = posterior.draw(num_samples)
        # Eq. 4.14, per sample: log q_m(z_m) - log|det J_f(z_m)| - log N(f(z_m); f(mu_m), I).
        log_amortized_prior = standard_normal_log_prob(draw.transformed - posterior.flowed_means())
        kl_samples = draw.unimodal_log_q - draw.log_det_forward - log_amortized_prior  # [K, M, B]
        present = subsets.any(0).to(kl_samples.dtype)
        amortized_prior = (kl_samples.mean(dim=(0, 2)) * present).sum()
        return Aggregation(
            z=draw.z,
            log_q=draw.log_q,
            subset_posteriors=posterior,
            divergence=None,
            extra_losses={"amortized_prior": self.amortized_prior_weight * amortized_prior},
        )
