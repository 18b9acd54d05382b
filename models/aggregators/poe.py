"""PoE (MVAE, Wu & Goodman 2018): the joint posterior is the product of the experts present.

Subsets used for training: the **full set** only (seed 001 eq. 7-8; thesis eq. 3.3), i.e. the
row of the subset mask equal to the union of the modalities present. Subset posteriors (for
conditional generation and latent probes) are the PoE of every row. Divergence: closed-form
KL(q(z|X) || N(0, I)).

Option ``prior_expert`` (``base.PriorExpert``): ``none`` (default, the equations), ``full_set``
(N(0, I) as one more expert in the product of all the model's modalities only; with a modality
missing from the batch the trained joint then has none) or ``all_subsets`` (in every product,
as the MVAE code).
"""

from __future__ import annotations

from torch import Tensor

from models.aggregators.base import (
    PRIOR_EXPERT_MODES,
    Aggregation,
    Aggregator,
    PriorExpert,
    check_choice,
    prior_expert_weights,
    register_aggregator,
)
from models.aggregators.deferred import DeferredPosterior
from models.distributions import DiagonalGaussian, product_of_experts
from models.subsets import full_row


@register_aggregator
class PoEAggregator(Aggregator):
    name = "poe"

    def __init__(self, num_modalities: int, latent_dim: int, prior_expert: PriorExpert = "none") -> None:
        """``prior_expert``: which products include N(0, I) as an expert (module docstring)."""
        super().__init__(num_modalities, latent_dim)
        check_choice("prior_expert", prior_expert, PRIOR_EXPERT_MODES)
        self.prior_expert = prior_expert

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        prior_weight = prior_expert_weights(self.prior_expert, subsets, mu.dtype)
        return product_of_experts(mu, logvar, subsets, prior_weight=prior_weight)

    def joint_posterior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        """``[1, B]`` the PoE of the largest subset in ``subsets``."""
        return self.subset_posteriors(mu, logvar, subsets[full_row(subsets)])

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        # Training needs only the full row; the other rows are built if someone reads them.
        joint = self.joint_posterior(mu, logvar, subsets)
        z, log_q = joint.rsample_with_log_prob(num_samples)
        posteriors = DeferredPosterior(lambda: self.subset_posteriors(mu, logvar, subsets))
        return Aggregation(z=z, log_q=log_q, subset_posteriors=posteriors, divergence=joint.kl_standard_normal())
