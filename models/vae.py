"""``MultimodalVAE``: per-modality encoders/decoders/likelihoods around one aggregator.

Built from the dataset's ``ModalitySpec`` list (shard manifest). Every method takes a batch dict
``{modality name: tensor [B, ...]}`` holding any non-empty subset of the modalities: the
missing ones are not encoded, not reconstructed, and the aggregator sees only the subsets made
of present modalities (``models.subsets.available_rows``). Absent experts are passed to the
aggregator as N(0, I) placeholders that no subset row uses.

Optional modality-specific (style) latents (``style_latent_dim`` > 0; MoPoE's
``factorized_representation``, mmJSD's "MS" models, seed 004 eq. 10, seed 001 eq. 34): each
encoder then outputs ``D + D_style`` parameters, the first ``D`` the expert q(z | x_m) that the
aggregator fuses exactly as without style, the last ``D_style`` the style posterior
q(w_m | x_m) (diagonal Gaussian, prior N(0, I)), and each decoder reads ``[z, w_m]``. Every
aggregator works unchanged on the shared part; ``encode`` and ``subset_posteriors`` return the
shared part only (latent probes evaluate the shared latent). The objective is in
``models.objective``. Random draws: the aggregator's first, then one style draw per modality in
model order.

Style in generation (as MoPoE's ``cond_generation`` / ``generate``, whose coherence is measured
with random styles for every output modality, conditioning ones included): ``generate`` decodes
every modality with a style drawn from the prior (one draw per batch element and modality,
shared by all subset rows, so that rows differ only in their shared latent), or with
``style="encoded"`` the encoded style of the modalities in each row's subset (self-
reconstruction, as MoPoE's training reconstruction and swapping plots) and prior styles for the
others. ``sample_prior`` draws every style from N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.aggregators import build_aggregator
from models.aggregators.base import SubsetPosterior
from models.distributions import DiagonalGaussian, standard_normal_log_prob
from models.likelihoods import build_likelihood
from models.networks import build_networks
from models.objective import ObjectiveOutput, StyleLatent, logmeanexp, multimodal_objective
from models.subsets import available_rows, present_mask, rows_by_name, subset_mask, subset_names

SubsetSelection = Sequence[str] | Tensor | None
"""Subsets to use: ``None`` (every subset of the modalities present), names such as
``["m0", "m0_m2"]``, or a bool mask ``[S', M]``."""


class MultimodalVAE(nn.Module):
    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        aggregator: str = "mopoe",
        aggregator_options: Mapping | None = None,
        latent_dim: int = 512,
        beta: float = 1.0,
        num_importance_samples: int = 1,
        networks: Mapping[str, str] | None = None,
        likelihood_options: Mapping[str, Mapping] | None = None,
        reconstruction_weights: Mapping[str, float] | None = None,
        analytic_divergence: bool = True,
        style_latent_dim: int = 0,
        style_beta: float | Mapping[str, float] = 1.0,
    ) -> None:
        """
        Args:
            modalities: one spec per modality, in the model's modality order.
            aggregator, aggregator_options: registry name and options (``models.aggregators``).
            latent_dim: D (512 for PolyMNIST in seed 001).
            beta: divergence weight (thesis eq. 3.2; see ``models.objective`` for K > 1).
            num_importance_samples: K of the training bound.
            networks: per-modality network registry entry, overriding the automatic choice.
            likelihood_options: per-modality likelihood options, e.g. ``{"m0": {"scale": 0.5}}``.
            reconstruction_weights: per-modality weight of log p(x_m|z) (default 1).
            analytic_divergence: K = 1 uses the aggregator's closed-form divergence if it has one
                (and the closed-form style KLs).
            style_latent_dim: D_style of the modality-specific latent w_m of every modality;
                0 (default) turns style latents off (networks and parameters as without them).
            style_beta: weight of KL(q(w_m | x_m) || N(0, I)) in the loss, one for all modalities
                or per modality name (modalities not named get 1). It is the KL's whole weight,
                not multiplied by ``beta`` (see ``models.objective``).
        """
        super().__init__()
        if not modalities:
            raise ValueError("need at least one modality")
        self.specs = {spec.name: spec for spec in modalities}
        if len(self.specs) != len(modalities):
            raise ValueError("modality names must be unique")
        self.latent_dim = latent_dim
        self.beta = beta
        self.num_importance_samples = num_importance_samples
        self.reconstruction_weights = dict(reconstruction_weights or {})
        self.analytic_divergence = analytic_divergence
        if isinstance(style_latent_dim, bool) or not isinstance(style_latent_dim, int) or style_latent_dim < 0:
            raise ValueError(f"style_latent_dim must be an integer >= 0, got {style_latent_dim!r}")
        self.style_latent_dim = style_latent_dim
        self.style_betas = self._style_betas(style_beta)
        networks = networks or {}
        likelihood_options = likelihood_options or {}
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.likelihoods = {}
        for spec in modalities:
            encoder, decoder = build_networks(spec, latent_dim + style_latent_dim, networks.get(spec.name))
            self.encoders[spec.name] = encoder
            self.decoders[spec.name] = decoder
            self.likelihoods[spec.name] = build_likelihood(spec.likelihood, **likelihood_options.get(spec.name, {}))
        self.aggregator = build_aggregator(aggregator, len(modalities), latent_dim, **dict(aggregator_options or {}))
        self.register_buffer("_subsets", subset_mask(len(modalities)), persistent=False)
        self._subset_names = subset_names(self._subsets, self.modality_names)

    def _style_betas(self, style_beta: float | Mapping[str, float]) -> dict[str, float]:
        if isinstance(style_beta, Mapping):
            unknown = sorted(set(style_beta) - set(self.specs))
            if unknown:
                raise ValueError(f"style_beta names modalities {unknown} not in the model ({self.modality_names})")
            betas = {name: float(style_beta.get(name, 1.0)) for name in self.specs}
        else:
            betas = {name: float(style_beta) for name in self.specs}
        for name, value in betas.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"style_beta of {name!r} must be finite and >= 0, got {value}")
        return betas

    @property
    def has_style(self) -> bool:
        return self.style_latent_dim > 0

    # ----------------------------------------------------------------------------- naming
    @property
    def modality_names(self) -> list[str]:
        return list(self.specs)

    @property
    def subsets(self) -> Tensor:
        """``[2^M - 1, M]`` bool mask of all non-empty subsets (``models.subsets`` order)."""
        return self._subsets

    @property
    def subset_names(self) -> list[str]:
        return list(self._subset_names)

    def subset_rows(self, present: Sequence[str], subsets: SubsetSelection = None) -> Tensor:
        """Row indices into ``self.subsets`` selected by ``subsets`` for the modalities ``present``."""
        available = available_rows(self._subsets, present_mask(self.modality_names, present).to(self._subsets.device))
        if subsets is None:
            return available
        if isinstance(subsets, Tensor):
            rows = torch.nonzero((self._subsets[None] == subsets.to(self._subsets.device)[:, None]).all(-1))[:, 1]
            if rows.numel() != subsets.shape[0]:
                raise ValueError("subset mask has rows that are not non-empty subsets of the modalities")
        else:
            rows = rows_by_name(self._subset_names, list(subsets)).to(self._subsets.device)
        if not torch.isin(rows, available).all():
            raise ValueError(f"subsets {subsets} need modalities missing from the batch ({list(present)})")
        return rows

    # ----------------------------------------------------------------------------- pieces
    def _present(self, inputs: Mapping[str, Tensor]) -> list[str]:
        present = [name for name in self.specs if name in inputs]
        unknown = set(inputs) - set(self.specs)
        if unknown or not present:
            raise ValueError(f"batch has modalities {sorted(inputs)}, model {self.modality_names}")
        return present

    def _encode(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, DiagonalGaussian]]:
        """Shared ``(mu, logvar)`` ``[M, B, D]`` (missing = N(0, I)) and the style posteriors
        q(w_m | x_m) (batch ``[B]``) of the modalities present (empty without style)."""
        present = self._present(inputs)
        outputs = {name: self.encoders[name](inputs[name]) for name in present}
        styles = {}
        if self.has_style:
            d = self.latent_dim
            styles = {name: DiagonalGaussian(mu[..., d:], logvar[..., d:]) for name, (mu, logvar) in outputs.items()}
            outputs = {name: (mu[..., :d], logvar[..., :d]) for name, (mu, logvar) in outputs.items()}
        reference = outputs[present[0]][0]
        zeros = torch.zeros_like(reference)
        mu = torch.stack([outputs[n][0] if n in outputs else zeros for n in self.specs])
        logvar = torch.stack([outputs[n][1] if n in outputs else zeros for n in self.specs])
        return mu, logvar, styles

    def encode(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Unimodal posterior parameters ``(mu, logvar)`` of the shared latent, each ``[M, B, D]``;
        missing = N(0, I)."""
        mu, logvar, _ = self._encode(inputs)
        return mu, logvar

    def style_posteriors(self, inputs: Mapping[str, Tensor]) -> dict[str, DiagonalGaussian]:
        """q(w_m | x_m), batch ``[B]``, event ``[D_style]``, per modality present (empty without style)."""
        return self._encode(inputs)[2]

    def decode(
        self, z: Tensor, modalities: Sequence[str] | None = None, styles: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Decoder outputs (likelihood parameters) ``[*lead, *event]`` for ``z [*lead, D]``.

        With style latents every decoded modality needs its style ``styles[m]``, a tensor that
        broadcasts to ``[*lead, D_style]``; each decoder reads ``[z, w_m]``.
        """
        lead = z.shape[:-1]
        names = self.modality_names if modalities is None else modalities
        flat = None if self.has_style else z.reshape(-1, self.latent_dim)
        result = {}
        for name in names:
            if self.has_style:
                if styles is None or name not in styles:
                    raise ValueError(f"decoding {name!r} needs its style latent (style_latent_dim > 0)")
                style = styles[name].expand(*lead, self.style_latent_dim)
                flat = torch.cat([z, style], dim=-1).reshape(-1, self.latent_dim + self.style_latent_dim)
            params = self.decoders[name](flat)
            result[name] = params.reshape(*lead, *params.shape[1:])
        return result

    def _log_likelihoods(
        self,
        z: Tensor,
        inputs: Mapping[str, Tensor],
        present: Sequence[str],
        styles: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``[*lead, B]`` log p(x_m | z (, w_m)) for ``z [*lead, B, D]``, every modality present."""
        params = self.decode(z, present, styles)
        return {name: self.likelihoods[name].log_prob(params[name], inputs[name]) for name in present}

    def _sample_styles(
        self, posteriors: Mapping[str, DiagonalGaussian], lead: torch.Size
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Independent reparameterized draws ``w_m [*lead, B, D_style]`` of every style posterior
        and ``log N(w_m; 0, I) - log q(w_m | x_m)`` ``[*lead, B]`` (one draw per importance
        sample and component: every component's bound is an IWAE estimate of its own)."""
        samples, log_ratios = {}, {}
        for name, posterior in posteriors.items():
            count = math.prod(lead)
            w, log_q = posterior.rsample_with_log_prob(count)  # [K*C, B, D_style]
            w = w.reshape(*lead, *w.shape[1:])
            samples[name] = w
            log_ratios[name] = standard_normal_log_prob(w) - log_q.reshape(*lead, -1)
        return samples, log_ratios

    # ----------------------------------------------------------------------------- public
    def forward(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        present = self._present(inputs)
        mu, logvar, style_posteriors = self._encode(inputs)
        subsets = self._subsets[self.subset_rows(present)]
        aggregation = self.aggregator(mu, logvar, subsets, self.num_importance_samples)
        styles, log_ratios = self._sample_styles(style_posteriors, aggregation.z.shape[:2])
        log_likelihoods = self._log_likelihoods(aggregation.z, inputs, present, styles)
        style_latents = {
            name: StyleLatent(posterior.kl_standard_normal(), log_ratios[name], self.style_betas[name])
            for name, posterior in style_posteriors.items()
        }
        return multimodal_objective(
            log_likelihoods,
            aggregation,
            beta=self.beta,
            reconstruction_weights=self.reconstruction_weights,
            analytic_divergence=self.analytic_divergence,
            style_latents=style_latents,
        )

    def subset_posteriors(self, inputs: Mapping[str, Tensor], subsets: SubsetSelection = None) -> SubsetPosterior:
        """Posteriors with batch ``[S', B]`` for the selected subsets (rows: ``subset_rows``)."""
        present = self._present(inputs)
        mu, logvar = self.encode(inputs)
        return self.aggregator.subset_posteriors(mu, logvar, self._subsets[self.subset_rows(present, subsets)])

    @torch.no_grad()
    def generate(
        self,
        inputs: Mapping[str, Tensor],
        subsets: SubsetSelection = None,
        use_mean: bool = False,
        style: Literal["prior", "encoded"] = "prior",
    ) -> dict[str, Tensor]:
        """Every modality decoded from one draw (or the mean) of each subset posterior: ``[S', B, ...]``.

        Images are the likelihood mean clamped to [0, 1], text the argmax ids.

        With style latents, ``style`` picks the style each modality is decoded with (module
        docstring): ``prior`` (default, MoPoE's conditional generation) a draw from N(0, I)
        for every modality, shared by all rows; ``encoded`` the encoded style q(w_m | x_m) of
        each modality in the row's subset, a prior draw for the others. ``use_mean`` takes the
        mean of every distribution involved (0 for the prior). Without style ``style`` is unused.
        """
        if style not in ("prior", "encoded"):
            raise ValueError(f"style must be 'prior' or 'encoded', got {style!r}")
        present = self._present(inputs)
        mu, logvar, style_posteriors = self._encode(inputs)
        chosen = self._subsets[self.subset_rows(present, subsets)]
        posteriors = self.aggregator.subset_posteriors(mu, logvar, chosen)
        z = posteriors.mean if use_mean else posteriors.rsample_with_log_prob(1)[0][0]
        if not self.has_style:
            return self._outputs(z)
        batch = z.shape[1]
        styles = {}
        for index, name in enumerate(self.modality_names):
            styles[name] = self._prior_style(batch, z, use_mean)  # [B, D_style], broadcast over rows
            if style == "encoded" and name in style_posteriors:
                posterior = style_posteriors[name]
                encoded = posterior.mean if use_mean else posterior.rsample(1)[0]
                styles[name] = torch.where(chosen[:, index, None, None], encoded, styles[name])  # [S', B, D_style]
        return self._outputs(z, styles)

    @torch.no_grad()
    def sample_prior(self, num_samples: int) -> dict[str, Tensor]:
        """Unconditional samples ``[N, ...]`` per modality, z ~ N(0, I) (also for mmJSD, seed 004 §3.2)
        and every style w_m ~ N(0, I)."""
        reference = next(self.parameters())
        z = torch.randn(num_samples, self.latent_dim, dtype=reference.dtype, device=reference.device)
        if not self.has_style:
            return self._outputs(z)
        styles = {name: self._prior_style(num_samples, z, use_mean=False) for name in self.modality_names}
        return self._outputs(z, styles)

    def _prior_style(self, batch: int, like: Tensor, use_mean: bool) -> Tensor:
        shape = (batch, self.style_latent_dim)
        if use_mean:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def _outputs(self, z: Tensor, styles: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        return {name: self.likelihoods[name].mean(params) for name, params in self.decode(z, styles=styles).items()}

    @torch.no_grad()
    def log_likelihood(self, inputs: Mapping[str, Tensor], num_samples: int, chunk_size: int = 32) -> Tensor:
        """Importance-sampled log p(X) ``[B]`` of the modalities present (beta = 1).

        The proposal is the aggregator's joint posterior; all ``K x C`` weights enter one
        logmeanexp, which is unbiased in p(X) for C > 1 too because every component's samples
        are weighted by the density they were drawn from. Samples are drawn in chunks of
        ``chunk_size`` to bound memory.

        With style latents the proposal is ``q(z | X) prod_m q(w_m | x_m)`` over the modalities
        present, and each weight gains ``log N(w_m; 0, I) - log q(w_m | x_m)`` (the styles of
        absent modalities are integrated out exactly: they touch no observed likelihood).
        """
        present = self._present(inputs)
        mu, logvar, style_posteriors = self._encode(inputs)
        subsets = self._subsets[self.subset_rows(present)]
        log_weights = []
        for start in range(0, num_samples, chunk_size):
            aggregation = self.aggregator(mu, logvar, subsets, min(chunk_size, num_samples - start))
            styles, log_ratios = self._sample_styles(style_posteriors, aggregation.z.shape[:2])
            log_lik = sum(self._log_likelihoods(aggregation.z, inputs, present, styles).values())
            log_prior = aggregation.log_prior
            if log_prior is None:
                log_prior = standard_normal_log_prob(aggregation.z)
            log_weight = log_lik + log_prior - aggregation.log_q
            if log_ratios:
                log_weight = log_weight + sum(log_ratios.values())
            log_weights.append(log_weight.flatten(0, 1))
        return logmeanexp(torch.cat(log_weights), dim=0)
