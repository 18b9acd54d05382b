"""MoFoP: the MoPoE mixture whose subset posteriors are pushed through a flow (seed 000 §4.3.1).

Each subset posterior is the PoE of its experts (seed 001 Def. 1; thesis eq. 3.7),
``q~(z_0 | X_s)``, transformed by one flow ``f_psi`` shared by all subsets (eq. 4.7); its
density follows from the change of variables (eq. 4.8):
``log q_F(z_F | X_s) = log q~(z_0 | X_s) - log|det J_f(z_0)|``. The joint posterior is the
uniform mixture of the flowed subset posteriors (MoE over the ``2^M - 1`` subsets).

Because the flow is shared, the flowed mixture is the flow of the PoE mixture:
``q(z) = (1/S) sum_s q~_s(z_0) / |det J_f(z_0)|`` with ``z_0 = f^-1(z)``, so the exact
mixture density of a joint sample needs no inverse flow: it is evaluated at the ``z_0`` the
sample came from. Only the forward direction is used, so every back end qualifies,
``nflows_maf`` included (the thesis notes MoFoP does not need ``f^-1``).

Sampling: every subset's PoE is sampled (``[K, S, B, D]``) and flowed in one pass; the joint
sample is selected per ``(k, b)`` from one subset (component selection, as MoPoE; option
``component_selection``, ``mixture.ComponentSelection``: ``random`` or ``stratified``, default
``mixture.DEFAULT_COMPONENT_SELECTION``, stratified in training mode only).

Prior expert (option ``prior_expert``, ``base.PriorExpert``): ``none`` (default, the PoE of
the experts alone, eq. 3.7), ``full_set`` (N(0, I) as one more expert in the base PoE of all
the model's modalities only, as the MoPoE code) or ``all_subsets`` (in every subset's base PoE,
MMVAE_Hub's ``modality_poe``); the flow acts after the product either way.

Divergence (``divergence`` option):

``subset_mc`` (default)
    eq. 4.9-4.10: the average over subsets of ``KL(f(q~_s) || p)``, each a Monte Carlo
    estimate ``mean_k [log q~_s(z_0) - log|det J_f(z_0)| - log p(f(z_0))]`` from the
    subset's own samples. This is the MoPoE upper bound of the mixture's KL (Jensen; thesis
    eq. 3.8), estimated rather than closed-form (no closed form exists after the flow). The
    shared objective uses it for K = 1 (``Aggregation.divergence``).
``mixture_mc``
    no ``Aggregation.divergence``: the objective estimates ``log q - log p`` of the joint
    mixture itself, the tighter (exact-in-expectation) KL of the mixture.

Log-likelihood: ``log_q`` is the exact density of the joint proposal (flowed MoPoE
mixture), so ``MultimodalVAE.log_likelihood`` gives the usual consistent importance-sampled
estimate of ``log p(X)`` (a lower bound in expectation, tight as K grows).

Unimodal family: Gaussian only (the PoE needs Gaussian experts in closed form).
``subset_posteriors`` returns the flowed PoEs; their ``mean`` is ``f(mu_PoE)``, the image of
the base mean (the point embedding; not the flowed distribution's expectation).
"""

from __future__ import annotations

from collections.abc import Callable

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
from models.aggregators.fmean_common import FlowOptions, neutralize_unused_experts
from models.aggregators.mixture import (
    COMPONENT_SELECTIONS,
    DEFAULT_COMPONENT_SELECTION,
    ComponentSelection,
    GaussianMixture,
    training_selection,
)
from models.distributions import DiagonalGaussian, product_of_experts, standard_normal_log_prob
from models.flows import Flow


class FlowedGaussian:
    """``f(N(mu, diag var))`` with batch ``[S, B]``; satisfies ``SubsetPosterior``."""

    def __init__(self, base: DiagonalGaussian, flow: Flow) -> None:
        self.base = base
        self.flow = flow

    @property
    def mean(self) -> Tensor:
        return self.flow(self.base.mean)[0]

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        z0, log_q0 = self.base.rsample_with_log_prob(num_samples)
        z, log_det = self.flow(z0)
        return z, log_q0 - log_det  # eq. 4.8


def _subset_mc_divergence(subset_kl_samples: Tensor) -> Tensor:
    """``[K, S, B]`` per-sample ``log q_F - log p`` -> ``[1, B]`` mean over K and subsets."""
    return subset_kl_samples.mean(dim=(0, 1)).unsqueeze(0)


DIVERGENCES: dict[str, Callable[[Tensor], Tensor] | None] = {
    "subset_mc": _subset_mc_divergence,
    "mixture_mc": None,
}


@register_aggregator
class MoFoPAggregator(Aggregator):
    """Options: ``flow_backend``, ``num_flows`` (1), ``coupling_layers`` (8),
    ``coupling_width`` (64), ``clamp`` (2.0) — Table 5.1 defaults — ``divergence``
    (``subset_mc``), ``prior_expert`` (``none``: the PoE of the experts alone, eq. 3.7),
    ``component_selection`` (module docstring)."""

    name = "mofop"

    def __init__(
        self,
        num_modalities: int,
        latent_dim: int,
        flow_backend: str = "freia_allinone",
        num_flows: int = 1,
        coupling_layers: int = 8,
        coupling_width: int = 64,
        clamp: float = 2.0,
        divergence: str = "subset_mc",
        prior_expert: PriorExpert = "none",
        component_selection: ComponentSelection = DEFAULT_COMPONENT_SELECTION,
    ) -> None:
        super().__init__(num_modalities, latent_dim)
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown mofop divergence {divergence!r}; choose from {sorted(DIVERGENCES)}")
        check_choice("prior_expert", prior_expert, PRIOR_EXPERT_MODES)
        check_choice("component_selection", component_selection, COMPONENT_SELECTIONS)
        self.flow = FlowOptions(flow_backend, num_flows, coupling_layers, coupling_width, clamp).build(latent_dim)
        self.divergence_kind = divergence
        self.prior_expert = prior_expert
        self.component_selection = component_selection

    def base_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        """The PoE of every subset before the flow, batch ``[S, B]``."""
        mu, logvar = neutralize_unused_experts(mu, logvar, subsets)
        prior_weight = prior_expert_weights(self.prior_expert, subsets, mu.dtype)
        return product_of_experts(mu, logvar, subsets, prior_weight=prior_weight)

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> FlowedGaussian:
        return FlowedGaussian(self.base_posteriors(mu, logvar, subsets), self.flow)

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        base = self.base_posteriors(mu, logvar, subsets)
        num_subsets, batch = base.batch_shape
        z0, log_q0 = base.rsample_with_log_prob(num_samples)  # [K, S, B, D], [K, S, B]
        z, log_det = self.flow(z0)

        # Component selection: one subset per (k, b), then the exact mixture density at z_0.
        mixture = GaussianMixture(base, torch.full((1, num_subsets), 1.0 / num_subsets, dtype=mu.dtype, device=mu.device))
        index = mixture.select(num_samples, training_selection(self, self.component_selection))  # [K, 1, B]
        gather = index.unsqueeze(-1).expand(-1, -1, -1, self.latent_dim)
        z_joint = z.gather(1, gather)

        def log_q_joint() -> Tensor:
            # Deferred (``Aggregation.log_q``): the K = 1 closed-form objective never reads
            # it, so the S-component mixture density is only paid for when used.
            return mixture.log_prob(z0.gather(1, gather)) - log_det.gather(1, index)

        divergence_fn = DIVERGENCES[self.divergence_kind]
        divergence = None
        if divergence_fn is not None:
            divergence = divergence_fn(log_q0 - log_det - standard_normal_log_prob(z))
        return Aggregation(
            z=z_joint,
            log_q=log_q_joint,
            subset_posteriors=FlowedGaussian(base, self.flow),
            divergence=divergence,
        )
