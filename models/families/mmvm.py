"""The ``mmvm`` family: the MMVM VAE (Sutter et al. 2024, "Unity by Diversity", seed 003).

Every modality m has its own latent z_m ~ q_m(z_m | x_m) (diagonal Gaussian, one size D for all,
since every encoder's density is evaluated on every z_m) and its own decoder p(x_m | z_m);
nothing is fused. The latents are tied by a data-dependent prior, the uniform mixture of the
unimodal posteriors of the same tuple, h(z_m | X) = (1/M) sum_m~ q_m~(z_m | x_m~) (seed 003
eq. 2). Loss = - sum_m lambda_m E log p(x_m | z_m) + beta * divergence, with the divergence the
reference code's (seed digest section 6): KL(q_m || mixture) has no closed form, so it is bounded
by convexity by the mean of the pairwise KLs, and N(0, I) is mixed in with a weight alpha that is
annealed from 1 to 0 over ``alpha_anneal_steps`` training steps:

    divergence = (1/M) sum_m [ (1 - alpha) sum_m~ KL(q_m || q_m~) + alpha M KL(q_m || N(0, I)) ]

alpha = 1 is M independent VAEs (``sum_m KL(q_m || N(0, I))``), alpha = 0 the pure MMVM bound.
Option ``prior: standard_normal`` keeps alpha at 1 for good: the paper's "independent VAEs"
baseline, trained jointly, with no interaction. Gradients flow through both arguments of every
KL (no stop-gradient on the prior), as in the reference code.

Evaluation: the posterior of a subset S is the uniform mixture of the unimodal posteriors of S
(the MMVM prior restricted to S): for one modality, conditional generation is exactly the
paper's (encode x_m, sample z ~ q_m, decode every modality with its own decoder); its mean, the
average of the unimodal means, is what the latent probe reads. The prior depends on the data, so
there is no unconditional generation (``sample_prior`` refuses; random coherence and prior PRD
are skipped) and no log p(X).

The annealing counter is a buffer of the model (``training_steps``, one per forward in training
mode): it travels in the checkpoint, so a resumed training continues the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from models.distributions import DiagonalGaussian
from models.families.base import Abilities, ModelFamily, ModelRequest, Stage, register_family
from models.objective import ObjectiveOutput
from models.vae import MultimodalVAE


def mmvm_divergence(mu: Tensor, logvar: Tensor, alpha: float | Tensor) -> Tensor:
    """``[B]`` the annealed pairwise-KL bound of the module docstring for posteriors ``[M, B, D]``."""
    num_modalities = mu.shape[0]
    experts = DiagonalGaussian(mu, logvar)
    # KL(q_m || q_m~) for every ordered pair, [M, M, B]; the diagonal is exactly 0.
    pairwise = DiagonalGaussian(mu[:, None], logvar[:, None]).kl(DiagonalGaussian(mu[None], logvar[None]))
    to_prior = experts.kl_standard_normal()  # [M, B]
    per_modality = (1.0 - alpha) * pairwise.sum(1) + alpha * num_modalities * to_prior
    return per_modality.sum(0) / num_modalities


class MMVMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prior: Literal["mixture", "standard_normal"] = "mixture"
    """``mixture``: the MMVM prior (annealed from N(0, I)); ``standard_normal``: independent VAEs."""
    alpha_anneal_steps: int = Field(300_000, ge=0)
    """Training steps over which alpha falls linearly from 1 to 0 (reference code: 300,000); 0
    starts at the pure mixture bound."""


class MMVMVAE(MultimodalVAE):
    """Per-modality encoders, decoders and likelihoods of ``MultimodalVAE``; the MMVM objective.

    The MoE aggregator gives the subset posteriors (uniform mixtures of unimodal posteriors) for
    generation and latent probes; it takes no part in training.
    """

    def __init__(self, modalities, prior: str = "mixture", alpha_anneal_steps: int = 300_000, **kwargs) -> None:
        super().__init__(modalities, aggregator="moe", **kwargs)
        if self.has_style:
            raise ValueError("MMVM has one latent per modality and no style latents (style_latent_dim must be 0)")
        self.prior = prior
        self.alpha_anneal_steps = alpha_anneal_steps
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

    def alpha(self) -> float:
        """The weight of N(0, I) in the prior at the current training step."""
        if self.prior == "standard_normal":
            return 1.0
        if self.alpha_anneal_steps == 0:
            return 0.0
        return max(0.0, 1.0 - float(self.training_steps) / self.alpha_anneal_steps)

    def forward(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        present = self._present(inputs)
        mu, logvar, _ = self._encode(inputs)
        rows = torch.tensor([self.modality_names.index(name) for name in present], device=mu.device)
        mu, logvar = mu[rows], logvar[rows]
        z = DiagonalGaussian(mu, logvar).rsample(1)[0]  # [M', B, D]: each modality's own latent
        log_likelihoods = {
            name: self.likelihoods[name].log_prob(self.decode(z[index], [name])[name], inputs[name])
            for index, name in enumerate(present)
        }
        alpha = self.alpha()
        divergence = mmvm_divergence(mu, logvar, alpha)
        reconstruction = sum(self.reconstruction_weights.get(name, 1.0) * value for name, value in log_likelihoods.items())
        bound = reconstruction - self.beta * divergence
        loss = -bound.mean()
        if self.training:
            self.training_steps += 1
        terms = {
            "bound": bound.mean().detach(), "divergence": divergence.mean().detach(),
            "alpha": torch.tensor(alpha, device=loss.device), "loss": loss.detach(),
        }
        nll = {name: -value.mean().detach() for name, value in log_likelihoods.items()}
        return ObjectiveOutput(loss=loss, terms=terms, modality_terms={"nll": nll})

    def sample_prior(self, num_samples: int) -> dict[str, Tensor]:
        raise NotImplementedError("MMVM has no unconditional generation: its prior depends on the data")

    def log_likelihood(self, inputs: Mapping[str, Tensor], num_samples: int, chunk_size: int = 32) -> Tensor:
        raise NotImplementedError("MMVM has no log p(X): its prior depends on the data")


def check(request: ModelRequest) -> None:
    if request.style_latent_dim:
        raise ValueError("model.style_latent_dim: family mmvm has one latent per modality and no style latents; use 0")
    if request.num_importance_samples != 1:
        raise ValueError("model.num_importance_samples: family mmvm trains the single-sample bound; use 1")


def build(request: ModelRequest, options: MMVMOptions) -> MMVMVAE:
    check(request)
    return MMVMVAE(
        request.specs, prior=options.prior, alpha_anneal_steps=options.alpha_anneal_steps,
        networks=request.networks, latent_dim=request.latent_dim, beta=request.beta,
        likelihood_options=request.likelihood_options,
    )


MMVM = register_family(ModelFamily(
    name="mmvm",
    summary="one latent per modality, tied by the mixture of the unimodal posteriors as prior (seed 003)",
    build=build,
    stages=lambda options, epochs: [Stage("train", epochs)],
    options=MMVMOptions,
    abilities=Abilities(unconditional_generation=False, log_likelihood=False),
    check=check,
))
