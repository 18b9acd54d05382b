"""MoE (MMVAE, Shi et al. 2019): the joint posterior is the uniform mixture of the experts.

Subsets used for training: the **unimodal** rows of the mask (thesis eq. 3.4; seed 001
eq. 9-10). The joint is sampled by component selection and ``log_q`` is the exact mixture
density. Divergence: the average of the closed-form unimodal KLs, the Jensen upper bound of
the mixture KL (thesis eq. 3.9, Lemma 3.1 of seed 004), as in the MoPoE paper's baselines.
Subset posteriors: the uniform mixture of the experts in each subset (how MMVAE conditions on
several modalities).

Option ``component_selection`` (``mixture.ComponentSelection``, default
``mixture.DEFAULT_COMPONENT_SELECTION``): ``random`` draws each training sample's expert
independently, ``stratified`` gives every expert present an equal contiguous share of the batch
(``mixture.stratified_components``; training mode only).
"""

from __future__ import annotations

from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, check_choice, register_aggregator, subset_sizes
from models.aggregators.mixture import (
    COMPONENT_SELECTIONS,
    DEFAULT_COMPONENT_SELECTION,
    ComponentSelection,
    GaussianMixture,
    training_selection,
    uniform_weights,
)
from models.distributions import DiagonalGaussian
from models.subsets import unimodal_rows


def unimodal_experts_present(subsets: Tensor) -> Tensor:
    """Indices of the modalities that have a unimodal row in ``subsets``."""
    return subsets[unimodal_rows(subsets)].float().argmax(-1)


def subset_mixtures(mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
    """``[S, B]``: row ``s`` is the uniform mixture of the experts in subset ``s``."""
    weights = subsets.to(mu.dtype) / subset_sizes(subsets).to(mu.dtype)[:, None]
    return GaussianMixture(DiagonalGaussian(mu, logvar), weights)


@register_aggregator
class MoEAggregator(Aggregator):
    name = "moe"

    def __init__(
        self, num_modalities: int, latent_dim: int, component_selection: ComponentSelection = DEFAULT_COMPONENT_SELECTION
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        check_choice("component_selection", component_selection, COMPONENT_SELECTIONS)
        self.component_selection = component_selection

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
        return subset_mixtures(mu, logvar, subsets)

    def joint_posterior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
        present = unimodal_experts_present(subsets)
        return GaussianMixture(DiagonalGaussian(mu, logvar), uniform_weights(present, mu.shape[0], mu.dtype))

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        present = unimodal_experts_present(subsets)
        joint = self.joint_posterior(mu, logvar, subsets)
        z = joint.rsample(num_samples, training_selection(self, self.component_selection))
        divergence = DiagonalGaussian(mu[present], logvar[present]).kl_standard_normal().mean(0, keepdim=True)
        return Aggregation(
            z=z,
            log_q=lambda: joint.log_prob(z),  # deferred: unused by the K = 1 closed-form ELBO
            subset_posteriors=self.subset_posteriors(mu, logvar, subsets),
            divergence=divergence,
        )
