"""``MultimodalVAE``: per-modality encoders/decoders/likelihoods around one aggregator.

Built from the dataset's ``ModalitySpec`` list (shard manifest). Every method takes a batch dict
``{modality name: tensor [B, ...]}`` holding any non-empty subset of the modalities: the
missing ones are not encoded, not reconstructed, and the aggregator sees only the subsets made
of present modalities (``models.subsets.available_rows``). Absent experts are passed to the
aggregator as N(0, I) placeholders that no subset row uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.aggregators import build_aggregator
from models.aggregators.base import SubsetPosterior
from models.distributions import standard_normal_log_prob
from models.likelihoods import build_likelihood
from models.networks import build_networks
from models.objective import ObjectiveOutput, logmeanexp, multimodal_objective
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
            analytic_divergence: K = 1 uses the aggregator's closed-form divergence if it has one.
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
        networks = networks or {}
        likelihood_options = likelihood_options or {}
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.likelihoods = {}
        for spec in modalities:
            encoder, decoder = build_networks(spec, latent_dim, networks.get(spec.name))
            self.encoders[spec.name] = encoder
            self.decoders[spec.name] = decoder
            self.likelihoods[spec.name] = build_likelihood(spec.likelihood, **likelihood_options.get(spec.name, {}))
        self.aggregator = build_aggregator(aggregator, len(modalities), latent_dim, **dict(aggregator_options or {}))
        self.register_buffer("_subsets", subset_mask(len(modalities)), persistent=False)
        self._subset_names = subset_names(self._subsets, self.modality_names)

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

    def encode(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Unimodal posterior parameters ``(mu, logvar)``, each ``[M, B, D]``; missing = N(0, I)."""
        present = self._present(inputs)
        outputs = {name: self.encoders[name](inputs[name]) for name in present}
        reference = outputs[present[0]][0]
        zeros = torch.zeros_like(reference)
        mu = torch.stack([outputs[n][0] if n in outputs else zeros for n in self.specs])
        logvar = torch.stack([outputs[n][1] if n in outputs else zeros for n in self.specs])
        return mu, logvar

    def decode(self, z: Tensor, modalities: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Decoder outputs (likelihood parameters) ``[*lead, *event]`` for ``z [*lead, D]``."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)
        names = self.modality_names if modalities is None else modalities
        result = {}
        for name in names:
            params = self.decoders[name](flat)
            result[name] = params.reshape(*lead, *params.shape[1:])
        return result

    def _log_likelihoods(self, z: Tensor, inputs: Mapping[str, Tensor], present: Sequence[str]) -> dict[str, Tensor]:
        """``[*lead, B]`` log p(x_m | z) for ``z [*lead, B, D]``, every modality present."""
        params = self.decode(z, present)
        return {name: self.likelihoods[name].log_prob(params[name], inputs[name]) for name in present}

    # ----------------------------------------------------------------------------- public
    def forward(self, inputs: Mapping[str, Tensor]) -> ObjectiveOutput:
        present = self._present(inputs)
        mu, logvar = self.encode(inputs)
        subsets = self._subsets[self.subset_rows(present)]
        aggregation = self.aggregator(mu, logvar, subsets, self.num_importance_samples)
        log_likelihoods = self._log_likelihoods(aggregation.z, inputs, present)
        return multimodal_objective(
            log_likelihoods,
            aggregation,
            beta=self.beta,
            reconstruction_weights=self.reconstruction_weights,
            analytic_divergence=self.analytic_divergence,
        )

    def subset_posteriors(self, inputs: Mapping[str, Tensor], subsets: SubsetSelection = None) -> SubsetPosterior:
        """Posteriors with batch ``[S', B]`` for the selected subsets (rows: ``subset_rows``)."""
        present = self._present(inputs)
        mu, logvar = self.encode(inputs)
        return self.aggregator.subset_posteriors(mu, logvar, self._subsets[self.subset_rows(present, subsets)])

    @torch.no_grad()
    def generate(self, inputs: Mapping[str, Tensor], subsets: SubsetSelection = None, use_mean: bool = False) -> dict[str, Tensor]:
        """Every modality decoded from one draw (or the mean) of each subset posterior: ``[S', B, ...]``.

        Images are the likelihood mean clamped to [0, 1], text the argmax ids.
        """
        posteriors = self.subset_posteriors(inputs, subsets)
        z = posteriors.mean if use_mean else posteriors.rsample_with_log_prob(1)[0][0]
        return self._outputs(z)

    @torch.no_grad()
    def sample_prior(self, num_samples: int) -> dict[str, Tensor]:
        """Unconditional samples ``[N, ...]`` per modality, z ~ N(0, I) (also for mmJSD, seed 004 §3.2)."""
        reference = next(self.parameters())
        z = torch.randn(num_samples, self.latent_dim, dtype=reference.dtype, device=reference.device)
        return self._outputs(z)

    def _outputs(self, z: Tensor) -> dict[str, Tensor]:
        return {name: self.likelihoods[name].mean(params) for name, params in self.decode(z).items()}

    @torch.no_grad()
    def log_likelihood(self, inputs: Mapping[str, Tensor], num_samples: int, chunk_size: int = 32) -> Tensor:
        """Importance-sampled log p(X) ``[B]`` of the modalities present (beta = 1).

        The proposal is the aggregator's joint posterior; all ``K x C`` weights enter one
        logmeanexp, which is unbiased in p(X) for C > 1 too because every component's samples
        are weighted by the density they were drawn from. Samples are drawn in chunks of
        ``chunk_size`` to bound memory.
        """
        present = self._present(inputs)
        mu, logvar = self.encode(inputs)
        subsets = self._subsets[self.subset_rows(present)]
        log_weights = []
        for start in range(0, num_samples, chunk_size):
            aggregation = self.aggregator(mu, logvar, subsets, min(chunk_size, num_samples - start))
            log_lik = sum(self._log_likelihoods(aggregation.z, inputs, present).values())
            log_prior = aggregation.log_prior
            if log_prior is None:
                log_prior = standard_normal_log_prob(aggregation.z)
            log_weights.append((log_lik + log_prior - aggregation.log_q).flatten(0, 1))
        return logmeanexp(torch.cat(log_weights), dim=0)
