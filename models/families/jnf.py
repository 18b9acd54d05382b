"""The ``jnf`` and ``jnf_dcca`` families: Joint Normalizing Flows (Senellart et al. 2023, seed 002).

Generative model: p(z) = N(0, I), p(X | z) = prod_i p(x_i | z), one shared latent. Three kinds of
encoder, trained in stages (Algorithm 1):

``dcca`` (``jnf_dcca`` only)
    DCCA encoders g_i, trained to maximise the pairwise total canonical correlation of their
    outputs (``models.dcca``; Section 2.3), then frozen. The paper trains them in a separate
    run; here they are the first stage of the same training (same checkpoints, resumption and
    Aim run; stage 1 of the paper does not read them, so the order does not matter).
``joint``
    the joint encoder q(z | X) (each modality through its own block E_i, the outputs
    concatenated into an MLP head, a diagonal Gaussian) and every decoder, trained by the joint
    ELBO (eq. 2; K importance samples as the shared objective when K > 1).
``unimodal``
    joint encoder and decoders frozen; every unimodal encoder q_i(z | x_i) (a diagonal Gaussian
    base followed by MAF steps, eq. 8; on g_i(x_i) through an MLP head for ``jnf_dcca``) is
    fitted by the cross-entropy of eq. 9 against samples of the joint encoder.

Subset posteriors at evaluation (Section 3.4): the full set uses the joint encoder, one modality
its unimodal flow posterior, and a subset S of 2 .. M-1 modalities the product of eq. 12,
q(z | x_S) ∝ prod_{i in S} q_i(z | x_i) / p(z)^{|S|-1}, which has no closed form and is sampled by
HMC (``models.hmc``; Appendix C), every such subset and tuple a chain of one batched run. The
latent probe reads the mean of ``posterior_samples`` draws; the acceptance rate of the chains is
reported with the evaluation (``evaluation_diagnostics``). JNF trains on complete tuples only
(the joint encoder needs every modality).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from models.aggregators.base import Aggregation
from models.dcca import dcca_loss
from models.distributions import DiagonalGaussian, standard_normal_log_prob
from models.families.base import Abilities, ModelFamily, ModelRequest, Stage, StagedModel, register_family
from models.flow_posterior import FlowPosterior, unimodal_cross_entropy
from models.hmc import HMCSettings, hmc_sample
from models.networks import build_networks
from models.objective import ObjectiveOutput, logmeanexp, multimodal_objective
from models.vae import MultimodalVAE, SubsetSelection

HIDDEN = 512
"""Width of the joint head and the JNF-DCCA unimodal heads (Tables 4 and 5 of seed 002)."""


class JNFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    joint_epochs: int | None = Field(None, ge=1)
    """Epochs of the ``joint`` stage; the rest of the training fits the unimodal encoders.
    ``None``: half of what follows the DCCA stage (the paper's 100 of 200, 30 of 60)."""
    flow_steps: int = Field(2, ge=0)
    """MAF steps of every unimodal encoder (the paper: 2 MADE blocks)."""
    flow_hidden_layers: int = Field(2, ge=1)
    flow_width: int = Field(128, ge=1)
    fit_samples: int = Field(1, ge=1)
    """Joint-encoder draws per tuple in the stage-2 cross-entropy (eq. 9's Monte Carlo)."""
    posterior_samples: int = Field(10, ge=1)
    """Draws per subset posterior at evaluation; the latent probe reads their mean."""
    hmc_step_size: float = Field(0.05, gt=0.0)
    hmc_leapfrog_steps: int = Field(10, ge=1)
    hmc_burn_in: int = Field(50, ge=0)
    hmc_target_acceptance: float | None = Field(0.65, gt=0.0, lt=1.0)
    """Each chain tunes its step size (from ``hmc_step_size``) towards this acceptance probability
    during burn-in, so the sampler follows the posterior's scale as training narrows it; ``None``
    keeps ``hmc_step_size``. The paper gives no HMC settings (seed digest, section 7)."""


class JNFDCCAOptions(JNFOptions):
    dcca_epochs: int | None = Field(None, ge=1)
    """Epochs of the ``dcca`` stage; ``None``: a quarter of the training."""
    dcca_dim: int = Field(16, ge=1)
    """Output size of every DCCA encoder (the paper: 9 of 16 kept for MNIST-SVHN, 40 for CelebA)."""
    dcca_ridge: float = Field(1e-4, gt=0.0)


class JointEncoder(nn.Module):
    """q(z | X): each modality through its block, the ``(mu, logvar)`` outputs concatenated into
    an MLP head (MLP_j of seed 002, Tables 4 and 5)."""

    def __init__(self, blocks: Mapping[str, nn.Module], latent_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.head = nn.Sequential(
            nn.Linear(2 * latent_dim * len(blocks), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * latent_dim)
        )

    def forward(self, inputs: Mapping[str, Tensor]) -> DiagonalGaussian:
        missing = [name for name in self.blocks if name not in inputs]
        if missing:
            raise ValueError(f"the JNF joint encoder needs every modality; the batch lacks {missing}")
        features = torch.cat([torch.cat(self.blocks[name](inputs[name]), dim=-1) for name in self.blocks], dim=-1)
        mu, logvar = self.head(features).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)


class DCCAFeatures(nn.Module):
    """g_i: the modality's encoder network with a linear map of its two outputs to ``dim`` features
    (every parameter takes part in the DCCA loss, which DDP requires)."""

    def __init__(self, encoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat(self.encoder(x), dim=-1))


class DCCAHead(nn.Module):
    """MLP_i of JNF-DCCA: ``g_i(x_i) -> (mu, logvar)`` of the unimodal base Gaussian."""

    def __init__(self, features: DCCAFeatures, dcca_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features  # registered here too; its parameters belong to the ``dcca`` group
        self.mlp = nn.Sequential(
            nn.Linear(dcca_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.mlp(self.features(x)).chunk(2, dim=-1)
        return mu, logvar


class SampledPosterior:
    """Subset posteriors known by draws ``[N, S', B, D]`` (no density): what eq. 12 gives."""

    def __init__(self, samples: Tensor) -> None:
        self.samples = samples

    @property
    def mean(self) -> Tensor:
        return self.samples.mean(0)

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("JNF subset posteriors are sampled (HMC); their density is not available")


class JNFVAE(StagedModel, MultimodalVAE):
    """``encoders`` are the unimodal base encoders (``DCCAHead`` for ``jnf_dcca``), ``flows`` their
    MAF steps, ``joint_encoder`` q(z | X); decoders and likelihoods are ``MultimodalVAE``'s."""

    def __init__(self, request: ModelRequest, options: JNFOptions, dcca: bool = False) -> None:
        super().__init__(
            request.specs, aggregator="poe", networks=request.networks, latent_dim=request.latent_dim,
            beta=request.beta, num_importance_samples=request.num_importance_samples,
            likelihood_options=request.likelihood_options,
        )
        latent_dim = request.latent_dim
        self.options = options
        self.dcca = dcca
        specs = list(request.specs)
        network = request.networks.get
        self.joint_encoder = JointEncoder(
            {spec.name: build_networks(spec, latent_dim, network(spec.name))[0] for spec in specs}, latent_dim
        )
        self.flows = nn.ModuleDict({
            spec.name: FlowPosterior(latent_dim, options.flow_steps, coupling_layers=options.flow_hidden_layers,
                                     coupling_width=options.flow_width)
            for spec in specs
        })
        if dcca:
            dim = options.dcca_dim
            self.dcca_features = nn.ModuleDict({
                spec.name: DCCAFeatures(build_networks(spec, dim, network(spec.name))[0], dim) for spec in specs
            })
            self.encoders = nn.ModuleDict({
                spec.name: DCCAHead(self.dcca_features[spec.name], dim, latent_dim) for spec in specs
            })
        self.hmc = HMCSettings(
            step_size=options.hmc_step_size, leapfrog_steps=options.hmc_leapfrog_steps,
            num_samples=options.posterior_samples, burn_in=options.hmc_burn_in,
            target_acceptance=options.hmc_target_acceptance,
        )
        self._acceptance = [0.0, 0]  # sum of the runs' acceptance rates, runs (since the last read)
        self.stage = "joint"

    # ------------------------------------------------------------------ stages
    def parameter_groups(self) -> dict[str, nn.Module]:
        groups = {"joint": nn.ModuleList([self.joint_encoder, self.decoders, self.aggregator])}
        if self.dcca:
            heads = nn.ModuleList([head.mlp for head in self.encoders.values()])
            groups.update(dcca=self.dcca_features, unimodal=nn.ModuleList([heads, self.flows]))
        else:
            groups["unimodal"] = nn.ModuleList([self.encoders, self.flows])
        return groups

    def forward(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        return {"dcca": self._dcca_objective, "joint": self._joint_objective,
                "unimodal": self._unimodal_objective}[self.stage](inputs)

    def _joint_objective(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        """Eq. 2: the joint ELBO (IWAE with K > 1) of the joint encoder and the decoders."""
        present = self._present(inputs)
        joint = self.joint_encoder(inputs)
        z, log_q = joint.rsample_with_log_prob(self.num_importance_samples)  # [K, B, D], [K, B]
        z, log_q = z[:, None], log_q[:, None]  # one "component": [K, 1, B, ...]
        aggregation = Aggregation(z=z, log_q=log_q, subset_posteriors=joint, divergence=joint.kl_standard_normal()[None])
        log_likelihoods = self._log_likelihoods(z, inputs, present)
        return multimodal_objective(log_likelihoods, aggregation, beta=self.beta,
                                    reconstruction_weights=self.reconstruction_weights)

    def _unimodal_objective(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        """Eq. 9: - sum_i E_{q(z|X)} ln q_i(z | x_i), the joint encoder frozen."""
        with torch.no_grad():
            z = self.joint_encoder(inputs).rsample(self.options.fit_samples)  # [K, B, D]
        densities = {}
        for name in self.modality_names:
            mu, logvar = self.encoders[name](inputs[name])
            densities[name] = (lambda z, flow=self.flows[name], mu=mu, logvar=logvar: flow.log_prob(z, mu, logvar))
        loss, per_modality = unimodal_cross_entropy(z, densities)
        return ObjectiveOutput(loss=loss, terms={"cross_entropy": loss.detach(), "loss": loss.detach()},
                               modality_terms={"cross_entropy": per_modality})

    def _dcca_objective(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        """Section 2.3: maximise the pairwise total canonical correlation of the g_i."""
        views = [self.dcca_features[name](inputs[name]) for name in self.modality_names]
        loss = dcca_loss(views, ridge=self.options.dcca_ridge)
        return ObjectiveOutput(loss=loss, terms={"total_correlation": -loss.detach(), "loss": loss.detach()})

    # ------------------------------------------------------------------ evaluation
    def subset_posteriors(self, inputs: Mapping[str, Tensor], subsets: SubsetSelection = None) -> SampledPosterior:
        """``posterior_samples`` draws of every selected subset's posterior (module docstring)."""
        present = self._present(inputs)
        chosen = self._subsets[self.subset_rows(present, subsets)]  # [S', M]
        count = self.options.posterior_samples
        bases = {name: self.encoders[name](inputs[name]) for name in present}
        unimodal = torch.stack([self.flows[name].rsample(*bases[name], count) for name in present], dim=1)  # [N, M', B, D]
        masks = chosen[:, [self.modality_names.index(name) for name in present]]  # [S', M'] over the present ones
        sizes = masks.sum(-1)
        samples = unimodal.new_zeros(count, chosen.shape[0], *unimodal.shape[2:])
        single = sizes == 1
        samples[:, single] = unimodal[:, masks[single].to(torch.long).argmax(-1)]
        full = (sizes == len(self.modality_names)) & ~single
        if full.any():
            samples[:, full] = self.joint_encoder(inputs).rsample(count)[:, None]
        products = ~single & ~full
        if products.any():
            samples[:, products] = self._product_samples(masks[products], present, bases, unimodal)
        return SampledPosterior(samples)

    def _product_samples(self, masks: Tensor, present: Sequence[str], bases: Mapping[str, tuple[Tensor, Tensor]],
                         unimodal: Tensor) -> Tensor:
        """HMC draws ``[N, S_h, B, D]`` of eq. 12 for the subsets ``masks`` ``[S_h, M']`` of the modalities
        ``present``, all chains batched; each chain starts at the mean of its members' first draws
        (``unimodal [N, M', B, D]``)."""
        weights = masks.to(unimodal.dtype)
        sizes = weights.sum(-1)

        def log_prob(z: Tensor) -> Tensor:  # z [S_h, B, D] -> [S_h, B]
            experts = torch.stack([self.flows[name].log_prob(z, *bases[name]) for name in present])
            return torch.einsum("sm,msb->sb", weights, experts) - (sizes - 1)[:, None] * standard_normal_log_prob(z)

        initial = torch.einsum("sm,mbd->sbd", weights, unimodal[0]) / sizes[:, None, None]
        result = hmc_sample(log_prob, initial, self.hmc)
        self._acceptance[0] += float(result.acceptance_rate)
        self._acceptance[1] += 1
        return result.samples

    def evaluation_diagnostics(self) -> dict[str, float]:
        """Mean HMC acceptance rate of the runs since the last call (then reset); empty if none ran."""
        total, runs = self._acceptance
        self._acceptance = [0.0, 0]
        return {"hmc_acceptance": total / runs} if runs else {}

    @torch.no_grad()
    def generate(self, inputs: Mapping[str, Tensor], subsets: SubsetSelection = None, use_mean: bool = False,
                 style: str = "prior") -> dict[str, Tensor]:
        """Every modality decoded from one draw (or the mean of the draws) of each subset posterior."""
        posteriors = self.subset_posteriors(inputs, subsets)
        z = posteriors.mean if use_mean else posteriors.samples[0]
        return self._outputs(z)

    @torch.no_grad()
    def log_likelihood(self, inputs: Mapping[str, Tensor], num_samples: int, chunk_size: int = 32) -> Tensor:
        """Importance-sampled log p(X) ``[B]`` with the joint encoder as proposal (seed 002, section 5.4)."""
        present = self._present(inputs)
        joint = self.joint_encoder(inputs)
        log_weights = []
        for start in range(0, num_samples, chunk_size):
            z, log_q = joint.rsample_with_log_prob(min(chunk_size, num_samples - start))
            log_lik = sum(self._log_likelihoods(z, inputs, present).values())
            log_weights.append(log_lik + standard_normal_log_prob(z) - log_q)
        return logmeanexp(torch.cat(log_weights), dim=0)


def check(request: ModelRequest) -> None:
    if request.style_latent_dim:
        raise ValueError("model.style_latent_dim: the JNF families have one shared latent and no style latents; use 0")


def jnf_stages(options: JNFOptions, epochs: int, before: int = 0) -> list[Stage]:
    remaining = epochs - before
    joint = options.joint_epochs if options.joint_epochs is not None else math.ceil(remaining / 2)
    return [Stage("joint", joint, ("joint",)), Stage("unimodal", remaining - joint, ("unimodal",))]


def jnf_dcca_stages(options: JNFDCCAOptions, epochs: int) -> list[Stage]:
    dcca = options.dcca_epochs if options.dcca_epochs is not None else max(1, epochs // 4)
    return [Stage("dcca", dcca, ("dcca",)), *jnf_stages(options, epochs, before=dcca)]


JNF = register_family(ModelFamily(
    name="jnf",
    summary="joint encoder, then unimodal MAF encoders fitted to it; subsets by HMC (seed 002)",
    build=lambda request, options: JNFVAE(request, options),
    stages=jnf_stages,
    options=JNFOptions,
    abilities=Abilities(),
    check=check,
))
JNF_DCCA = register_family(ModelFamily(
    name="jnf_dcca",
    summary="JNF whose unimodal encoders read frozen DCCA features (seed 002)",
    build=lambda request, options: JNFVAE(request, options, dcca=True),
    stages=jnf_dcca_stages,
    options=JNFDCCAOptions,
    abilities=Abilities(),
    check=check,
))
