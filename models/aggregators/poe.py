"""PoE (MVAE, Wu & Goodman 2018): the joint posterior is the product of the experts present.

Subsets used for training: the **full set** only (seed 001 eq. 7-8; thesis eq. 3.3), i.e. the
row of the subset mask equal to the union of the modalities present. Subset posteriors (for
conditional generation and latent probes) are the PoE of every row. Divergence: closed-form
KL(q(z|X) || N(0, I)).
"""

from __future__ import annotations

from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, register_aggregator
from models.aggregators.deferred import DeferredPosterior
from models.distributions import DiagonalGaussian, product_of_experts
from models.subsets import full_row


@register_aggregator
class PoEAggregator(Aggregator):
    name = "poe"

    def __init__(self, num_modalities: int, latent_dim: int, prior_expert: bool = False) -> None:
        """``prior_expert``: include N(0, I) as an expert in every product (MoPoE code does)."""
        super().__init__(num_modalities, latent_dim)
        self.prior_expert = prior_expert

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        return product_of_experts(mu, logvar, subsets, prior_weight=1.0 if self.prior_expert else None)

    def joint_posterior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        """``[1, B]`` the PoE of the largest subset in ``subsets``."""
        return self.subset_posteriors(mu, logvar, subsets[full_row(subsets)])

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        # Training needs only the full row; the other rows are built if someone reads them.
        joint = self.joint_posterior(mu, logvar, subsets)
        z, log_q = joint.rsample_with_log_prob(num_samples)
        posteriors = DeferredPosterior(lambda: self.subset_posteriors(mu, logvar, subsets))
        return Aggregation(z=z, log_q=log_q, subset_posteriors=posteriors, divergence=joint.kl_standard_normal())
