"""MoPoE (Sutter et al. 2021, seed 001): a uniform mixture of the PoEs of all subsets.

Subsets used for training: **all** rows of the mask (every non-empty subset of the modalities
present). Subset posteriors: PoE per row (seed 001 Definition 1; thesis eq. 3.7). Joint:
uniform mixture over the rows (seed 001 eq. 6; thesis eq. 3.6, over the 2^M - 1 non-empty
subsets), sampled by component selection, ``log_q`` the exact mixture density. Divergence:
the average of the closed-form subset KLs, the upper bound of thesis eq. 3.8 used by the
MoPoE code. Restricted to the unimodal rows it is MoE; to the full row, PoE (seed 001 §3.3).

Options:

``prior_expert`` (``base.PriorExpert``, default ``none``)
    ``none``: the subset PoEs of the equations; ``full_set``: N(0, I) as one more expert in the
    product of all the model's modalities only (the MoPoE code's ``poe_fusion``, MultiVae);
    ``all_subsets``: in every subset's product (MMVAE_Hub's ``modality_poe``). The subset KLs
    of the divergence are those of the same products.
``component_selection`` (``mixture.ComponentSelection``, default
``mixture.DEFAULT_COMPONENT_SELECTION``, where the measurement behind it is written)
    how the training sample's subset is chosen: ``random``, independently per sample;
    ``stratified``, equal contiguous shares of the batch per subset (the MoPoE code's
    ``mixture_component_selection``; ``mixture.stratified_components``). Training mode only;
    ``log_q`` is the mixture density either way.

The training path forms only the selected components' products and the subset KLs (in a
cache-blocked autograd node, ``subset_kl``); the ``[S, B, D]`` subset posteriors and the
mixture density are built from the same shifted experts only when read (evaluation, or
``log_q`` for K > 1).
"""

from __future__ import annotations

import torch
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
from models.aggregators.mixture import (
    COMPONENT_SELECTIONS,
    DEFAULT_COMPONENT_SELECTION,
    ComponentSelection,
    GaussianMixture,
    select_components,
    training_selection,
)
from models.aggregators.subset_kl import subset_kls
from models.distributions import DiagonalGaussian, ShiftedExperts, product_of_experts


@register_aggregator
class MoPoEAggregator(Aggregator):
    name = "mopoe"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        prior_expert: PriorExpert = "none",
        component_selection: ComponentSelection = DEFAULT_COMPONENT_SELECTION,
    ) -> None:
        """Options: see the module docstring."""
        super().__init__(num_modalities, latent_dim)
        check_choice("prior_expert", prior_expert, PRIOR_EXPERT_MODES)
        check_choice("component_selection", component_selection, COMPONENT_SELECTIONS)
        self.prior_expert = prior_expert
        self.component_selection = component_selection

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        prior_weight = prior_expert_weights(self.prior_expert, subsets, mu.dtype)
        return product_of_experts(mu, logvar, subsets, prior_weight=prior_weight)

    @staticmethod
    def _mixture(posteriors: DiagonalGaussian) -> GaussianMixture:
        num_subsets = posteriors.mu.shape[0]
        weights = torch.full((1, num_subsets), 1.0 / num_subsets, dtype=posteriors.mu.dtype, device=posteriors.mu.device)
        return GaussianMixture(posteriors, weights)

    def joint_posterior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
        return self._mixture(self.subset_posteriors(mu, logvar, subsets))

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        prior_weight = prior_expert_weights(self.prior_expert, subsets, mu.dtype)
        experts = ShiftedExperts.from_experts(mu, logvar, subsets, prior_weight)
        num_subsets, batch = subsets.shape[0], mu.shape[1]
        # Uniform component selection, one subset per (sample, batch element); only the
        # selected products are formed for sampling.
        uniform = torch.full((1, num_subsets), 1.0 / num_subsets, dtype=mu.dtype, device=mu.device)
        selection = training_selection(self, self.component_selection)
        index = select_components(uniform, num_samples, batch, selection)[:, 0]
        selected = experts.selected_product(index)  # [K, B]
        # Noise in logical order (einsum outputs may be permuted views; randn_like would follow
        # their memory order), so that MoPoE on unimodal rows reproduces MoE's draws exactly.
        noise = torch.randn(selected.mu.shape, dtype=mu.dtype, device=mu.device)
        z = (selected.mu + (0.5 * selected.logvar).exp() * noise).unsqueeze(1)
        posteriors = DeferredPosterior(experts.product)
        return Aggregation(
            z=z,
            # Deferred: the K = 1 closed-form ELBO never evaluates the S-component density.
            log_q=lambda: self._mixture(posteriors.posterior).log_prob(z),
            subset_posteriors=posteriors,
            divergence=subset_kls(experts).mean(0, keepdim=True),
        )
