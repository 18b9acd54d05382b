"""iwMoGfM: f-mean of flowed expert samples with an importance-sample Gaussian proxy (seed 000 §4.3.4).

Subset posterior (eq. 4.20): ``q~(z | X_s) = f^-1(Q_s)``, ``Q_s = (1/|X_s|) sum_m f(z_m)``,
``z_m ~ q(z | x_m)``, for every subset (row of the mask) at once; one flow ``f`` shared by
all modalities. The density of ``Q_s`` has no tractable form (a convolution of the flowed
experts' densities, eq. 4.4); it is replaced by a Gaussian proxy ``Q~_s`` whose mean and
variance are estimated from importance samples (``fmean_common.proxy_density``), and

    ``log q~(z_s) ~ log Q~_s(y_s) - log|det J_{f^-1}(y_s)|``   (eq. 4.21, change of variables)

exact on unimodal rows. Every subset reconstructs: ``C = S`` (``z [K, S, B, D]``), so the
shared objective's ``logmeanexp_k`` averaged over components is ``L_K`` of eq. 4.18 (the
thesis code concatenates the subsets' losses the same way); no closed-form divergence
(``divergence=None``): the objective uses ``log q~ - log p``. The thesis trains it with
K = 2 and beta = 0.001 (§5.5.1): both are training-config choices.

Proxy samples: a variance needs at least two draws, so ``max(K, proxy_samples)`` expert
samples are drawn; all fit the proxy, the first ``K`` are the importance samples. With
``K >= proxy_samples`` no extra draw is made.

Log-likelihood: ``log_q`` is the proxy density, not the density of the distribution ``z``
was drawn from. ``MultimodalVAE.log_likelihood`` with this proposal estimates the
importance-weighted bound *under the proxy*, not ``log p(X)`` (no consistency, no
guaranteed bound); it is a model-internal diagnostic.

Options: ``flow_backend``, ``num_flows`` (4), ``coupling_layers`` (2), ``coupling_width``
(512), ``clamp`` (2.0) — Table 5.1 ("iwmogfm2" row) — ``proxy_samples`` (2), ``unimodal``
(``gaussian`` | ``laplace``, see ``fmean_common.UNIMODAL_FAMILIES``).
"""

from __future__ import annotations

from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, register_aggregator
from models.aggregators.fmean_common import FlowOptions, FMeanSamplePosterior, neutralize_unused_experts, unimodal_family


@register_aggregator
class IWMoGfMAggregator(Aggregator):
    name = "iwmogfm"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        flow_backend: str = "freia_allinone",
        num_flows: int = 4,
        coupling_layers: int = 2,
        coupling_width: int = 512,
        clamp: float = 2.0,
        proxy_samples: int = 2,
        unimodal: str = "gaussian",
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        if proxy_samples < 2:
            raise ValueError(f"proxy_samples must be >= 2 (a variance needs two draws), got {proxy_samples}")
        self.flow = FlowOptions(flow_backend, num_flows, coupling_layers, coupling_width, clamp).build(latent_dim)
        self.proxy_samples = proxy_samples
        self.unimodal = unimodal
        self._family = unimodal_family(unimodal)

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> FMeanSamplePosterior:
        mu, logvar = neutralize_unused_experts(mu, logvar, subsets)
        return FMeanSamplePosterior(
            self._family(mu, logvar), subsets, self.flow, density="proxy", min_fit_samples=self.proxy_samples
        )

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        posterior = self.subset_posteriors(mu, logvar, subsets)
        z, log_q = posterior.rsample_with_log_prob(num_samples)
        return Aggregation(z=z, log_q=log_q, subset_posteriors=posterior, divergence=None)
