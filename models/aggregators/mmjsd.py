"""mmJSD (Sutter, Daunhawer & Vogt 2020, seed 004): JS divergence against a dynamic prior.

Subsets used: the **unimodal** rows (the experts present) plus the dynamic prior.

* Regularizer (seed 004 eq. 4-5 with Definition 3):
  ``JS = sum_j pi_j KL(q_j || p_dyn) + pi_prior KL(N(0, I) || p_dyn)``, where the dynamic
  prior ``p_dyn`` is the pi-weighted geometric mean of the experts and N(0, I): a Gaussian with
  precision ``sum_k pi_k / var_k`` and the precision-weighted mean (a weighted PoE), so the whole
  term is closed form.
* Joint posterior for reconstruction: the MoE of the experts with the weights ``pi_j``
  renormalized without the prior (seed 004 §3.1; the mmjsd code's component selection gives
  the prior weight 0), sampled by component selection, ``log_q`` its exact density.
* Subset posteriors (conditional generation): uniform MoE of the experts in each subset, as
  the mmjsd code fuses subsets.
* Weights ``pi``: option ``weights`` of length M + 1 (modalities in order, prior last; the
  paper's job scripts use 0.25 each for three modalities); default uniform 1/(M+1). With
  missing modalities the weights of the absent ones are dropped and the rest renormalized.
* For the importance-weighted bound (K > 1) the prior in the weights is the pre-defined
  N(0, I): the dynamic prior depends on X and enters only through the closed-form JS term.
* No ``prior_expert`` option: mmJSD forms no subset products (its subsets are mixtures), and
  N(0, I) is already in the dynamic prior with its weight ``pi_{M+1}`` (Definition 3).
* Option ``component_selection`` (``mixture.ComponentSelection``, default
  ``mixture.DEFAULT_COMPONENT_SELECTION``): ``random`` draws each training sample's expert
  independently from the renormalized ``pi_j``; ``stratified`` is the mmjsd code's
  ``mixture_component_selection``, contiguous shares of the batch in proportion to them
  (``mixture.stratified_components``; training mode only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, check_choice, register_aggregator
from models.aggregators.mixture import (
    COMPONENT_SELECTIONS,
    DEFAULT_COMPONENT_SELECTION,
    ComponentSelection,
    GaussianMixture,
    training_selection,
)
from models.aggregators.moe import subset_mixtures, unimodal_experts_present
from models.distributions import DiagonalGaussian, product_of_experts


@register_aggregator
class MmJSDAggregator(Aggregator):
    name = "mmjsd"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        weights: Sequence[float] | None = None,
        component_selection: ComponentSelection = DEFAULT_COMPONENT_SELECTION,
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        check_choice("component_selection", component_selection, COMPONENT_SELECTIONS)
        self.component_selection = component_selection
        if weights is None:
            weights = [1.0 / (num_modalities + 1)] * (num_modalities + 1)
        if len(weights) != num_modalities + 1 or min(weights) < 0:
            raise ValueError(f"mmjsd needs {num_modalities + 1} non-negative weights (prior last), got {weights}")
        self.register_buffer("pi", torch.tensor(list(weights), dtype=torch.get_default_dtype()), persistent=False)

    def _weights(self, subsets: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Expert weights ``[M]`` (zero for absent modalities) and the prior weight, summing to 1."""
        present = torch.zeros(self.num_modalities, dtype=torch.bool, device=subsets.device)
        present[unimodal_experts_present(subsets)] = True
        pi = self.pi.to(dtype)
        experts = pi[:-1] * present
        total = experts.sum() + pi[-1]
        return experts / total, pi[-1] / total

    def dynamic_prior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        """``[1, B]`` the weighted geometric mean of the experts and N(0, I) (seed 004 Def. 3)."""
        expert_weights, prior_weight = self._weights(subsets, mu.dtype)
        return product_of_experts(mu, logvar, expert_weights[None], prior_weight=prior_weight)

    def js_divergence(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> Tensor:
        """``[1, B]`` JS^{M+1}_pi of the experts present and N(0, I) (seed 004 eq. 4, Def. 3)."""
        expert_weights, prior_weight = self._weights(subsets, mu.dtype)
        dynamic = product_of_experts(mu, logvar, expert_weights[None], prior_weight=prior_weight)
        to_dynamic = DiagonalGaussian(mu, logvar).kl(dynamic)  # [M, B]
        prior_to_dynamic = DiagonalGaussian.standard(dynamic.mu).kl(dynamic)  # [1, B]
        return (expert_weights[:, None] * to_dynamic).sum(0, keepdim=True) + prior_weight * prior_to_dynamic

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
        return subset_mixtures(mu, logvar, subsets)

    def joint_posterior(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> GaussianMixture:
        expert_weights, _ = self._weights(subsets, mu.dtype)
        return GaussianMixture(DiagonalGaussian(mu, logvar), (expert_weights / expert_weights.sum())[None])

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        joint = self.joint_posterior(mu, logvar, subsets)
        z = joint.rsample(num_samples, training_selection(self, self.component_selection))
        return Aggregation(
            z=z,
            log_q=lambda: joint.log_prob(z),  # deferred: unused by the K = 1 closed-form ELBO
            subset_posteriors=self.subset_posteriors(mu, logvar, subsets),
            divergence=self.js_divergence(mu, logvar, subsets),
        )
