"""Finite mixtures of diagonal Gaussians sharing one set of components.

One ``GaussianMixture`` holds ``C`` component Gaussians ``[C, B, D]`` and a weight matrix
``[R, C]``; row ``r`` is the mixture ``sum_c W[r, c] N(mu_c, sigma_c)``. This single object
covers every mixture of the fixed-fusion aggregators:

* MoE joint (thesis eq. 3.4): components = unimodal experts, one row, uniform weights;
* MoE subset posteriors: components = unimodal experts, row ``s`` = uniform over subset ``s``;
* MoPoE joint (seed 001 eq. 6 / thesis eq. 3.6): components = subset PoEs, one uniform row;
* mmJSD joint (seed 004 §3.1, MoE with weights pi renormalized without the prior).

Sampling is by component selection: choose one component per (sample, row, batch element),
gather its parameters (no dense work over components) and reparameterize it; the gradient flows
through the selected component only, as in the MoPoE/mmJSD code. How the component is chosen
(``ComponentSelection``, the aggregators' option ``component_selection``):

``random``
    drawn independently for every (sample, row, batch element) from ``W[r]``: every draw is an
    exact sample of the mixture. This is *not* how the MoPoE/mmJSD code samples.
``stratified``
    the MoPoE/mmJSD code's ``mixture_component_selection``: the batch is cut into contiguous
    shares, component ``c`` taking about ``B W[r, c]`` consecutive positions (equal shares for
    the uniform MoPoE/MoE mixtures), so that a (shuffled) batch holds every component in
    proportion to its weight (``stratified_components`` says how a remainder is placed).

Either way ``log_q`` is the *mixture's* density at the sample, never the selected component's.
``log_prob`` is the exact mixture density (logsumexp over components).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from models.distributions import LOG_2PI, DiagonalGaussian

ComponentSelection = Literal["random", "stratified"]
COMPONENT_SELECTIONS: tuple[str, ...] = ("random", "stratified")

DEFAULT_COMPONENT_SELECTION: ComponentSelection = "random"
"""The default of every aggregator's ``component_selection`` option, chosen by measurement.

``benchmarks/component_selection.py`` (default size; ``benchmarks/results/
component_selection.json``): three 1x8x8 toy modalities, MLP networks, latent 8, K = 1, the
model trained 200 Adam steps; on one fixed batch of 84 tuples, the gradient of the training
loss w.r.t. all encoder parameters for 200 seeds per option, its variance the trace of the
covariance over seeds (1 thread, 18 s, load average 2.4-3.8 on 2 cores; seeded, a rerun gives
the same numbers). With the batch order shuffled per seed, as the data loader does (both
options then estimate the same gradient: mean-gap statistic 0.78-0.86, 1 expected),
stratified / random = 1.027 (95% bootstrap interval 0.981-1.075) for MoPoE (random 444,
stratified 456), 0.989 (0.941-1.037) for MoE, 0.977 (0.934-1.022) for mmJSD; variants (no training, 1,000 steps, latent 32, batch 252)
gave 0.94-1.00. Only with the batch order fixed is stratified less noisy (0.86 MoPoE, 0.83
MoE, 0.90 mmJSD), and there it estimates another gradient (mean-gap statistic 4-9: each tuple
always reconstructs from the same subset). No variance to gain, so the default stays
``random``: exact mixture draws per sample, which need neither a shuffled batch nor a batch
size divisible by the number of subsets (at B = 256 and 7 subsets a stratified share is
36/256 or 37/256, not 1/7). ``stratified`` reproduces the MoPoE/mmJSD code's sampling."""


MAX_TEMPORARY_BYTES = 1 << 28
"""Bound on the ``[k, R, C, B, D]`` temporaries of ``GaussianMixture.log_prob``."""


class GaussianMixture:
    """Batch ``[R, B]`` of mixtures over shared components ``[C, B, D]``."""

    def __init__(self, components: DiagonalGaussian, weights: Tensor) -> None:
        if weights.dim() != 2 or weights.shape[1] != components.mu.shape[0]:
            raise ValueError(f"weights {tuple(weights.shape)} do not match components {tuple(components.mu.shape)}")
        self.components = components
        self.weights = weights.to(components.mu.dtype)
        self.log_weights = self.weights.log()

    @property
    def mean(self) -> Tensor:
        """``[R, B, D]`` the mixture mean sum_c W[r, c] mu_c."""
        return torch.einsum("rc,cbd->rbd", self.weights, self.components.mu)

    def select(self, num_samples: int, selection: ComponentSelection = "random") -> Tensor:
        """Component indices ``[K, R, B]`` for each row's weights (``select_components``)."""
        return select_components(self.weights, num_samples, self.components.mu.shape[1], selection)

    def rsample(self, num_samples: int, selection: ComponentSelection = "random") -> Tensor:
        """Reparameterized draws ``[K, R, B, D]`` by component selection."""
        return self.sample_components(self.select(num_samples, selection))

    def rsample_with_log_prob(self, num_samples: int, selection: ComponentSelection = "random") -> tuple[Tensor, Tensor]:
        """Draws and their mixture log-density (whatever ``selection`` chose)."""
        z = self.rsample(num_samples, selection)
        return z, self.log_prob(z)

    def sample_components(self, index: Tensor) -> Tensor:
        """Reparameterized draws ``[K, R, B, D]`` from the components named by ``index``."""
        batch = self.components.mu.shape[1]
        positions = torch.arange(batch, device=index.device)
        mu = self.components.mu[index, positions]
        logvar = self.components.logvar[index, positions]
        return mu + (0.5 * logvar).exp() * torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)

    def log_prob(self, z: Tensor) -> Tensor:
        """Exact log-density ``[K, R, B]`` of ``z`` ``[K, R, B, D]`` under row ``r``'s mixture.

        Every sample is evaluated under every component (``[k, R, C, B, D]`` temporaries), in
        chunks of samples so that evaluation with many importance samples stays within
        ``MAX_TEMPORARY_BYTES``.
        """
        mu, precision = self.components.mu, (-self.components.logvar).exp()
        normalizer = self.components.logvar.sum(-1) + mu.shape[-1] * LOG_2PI  # [C, B]
        per_sample = z.shape[1] * mu.numel() * z.element_size()
        step = max(1, MAX_TEMPORARY_BYTES // max(per_sample, 1))
        parts = []
        for start in range(0, z.shape[0], step):
            chunk = z[start : start + step]
            # [k, R, C, B]: every sample under every component, then logsumexp over components.
            component = -0.5 * (((chunk.unsqueeze(2) - mu).square() * precision).sum(-1) + normalizer)
            parts.append(torch.logsumexp(component + self.log_weights[None, :, :, None], dim=2))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def select_components(weights: Tensor, num_samples: int, batch: int, selection: ComponentSelection = "random") -> Tensor:
    """``[K, R, B]`` component indices for the rows of ``weights`` ``[R, C]``: ``random``
    draws them independently, ``stratified`` assigns them (``stratified_components``)."""
    if selection == "stratified":
        return stratified_components(weights, num_samples, batch)
    if selection != "random":
        raise ValueError(f"unknown component selection {selection!r}; choose from {COMPONENT_SELECTIONS}")
    rows, _ = weights.shape
    index = torch.multinomial(weights, num_samples * batch, replacement=True)
    return index.reshape(rows, num_samples, batch).transpose(0, 1)


def stratified_components(weights: Tensor, num_samples: int, batch: int) -> Tensor:
    """``[K, R, B]`` deterministic component indices: contiguous shares of the batch.

    Sample ``k`` at batch position ``b`` takes the component whose interval of the cumulative
    weights ``[F_{c-1}, F_c)`` holds ``u = (k + (b + 1/2) / B) / K`` (systematic sampling):

    * ``K = 1`` (the MoPoE/mmJSD code, which has no importance samples): component ``c`` takes
      the positions ``b`` with ``F_{c-1} <= (b + 1/2) / B < F_c``, a contiguous share of
      ``round(B F_c) - round(B F_{c-1})`` positions (halves rounded down). With uniform
      weights over ``S`` components the shares are all ``B / S`` when ``S`` divides ``B``;
      otherwise they differ by at most one and the ``B mod S`` longer shares sit where rounding
      puts them (``B = 10, S = 3``: 3, 4, 3; ``B = 8, S = 3``: 3, 2, 3). The MoPoE code gives
      every share ``floor(B W_c)`` and the whole remainder to the last component instead.
      Zero-weight components get no position.
    * ``K > 1``: each batch position's ``K`` samples spread over the components in proportion
      to the weights (within one sample of ``K W_c``; exactly when ``K W_c`` are integers), so
      that the importance samples of one data point still cover the mixture.

    As in the MoPoE code, a sample's expected loss equals the mixture's only averaged over the
    positions it can take (a shuffled batch, and ``S`` dividing ``B``); the aggregators use it in
    training mode only (``training_selection``).
    """
    rows, _ = weights.shape
    cumulative = weights.to(torch.float64).cumsum(-1)
    # Normalized so that the last bound is exactly 1 (also after zero-weight trailing components).
    bounds = (cumulative / cumulative[:, -1:]).contiguous()
    k = torch.arange(num_samples, dtype=torch.float64, device=weights.device)[:, None]
    b = torch.arange(batch, dtype=torch.float64, device=weights.device)[None, :]
    u = (k + (b + 0.5) / batch) / num_samples  # [K, B], in (0, 1)
    index = torch.searchsorted(bounds, u.reshape(1, -1).expand(rows, -1).contiguous(), right=True)
    index = index.clamp_max(weights.shape[1] - 1)  # rounding safety only: u < 1 = the last bound
    return index.reshape(rows, num_samples, batch).transpose(0, 1)


def training_selection(module: torch.nn.Module, selection: ComponentSelection) -> ComponentSelection:
    """The selection an aggregator uses now: its option while training; ``random`` in eval mode,
    so that evaluation (``MultimodalVAE.log_likelihood``) weighs every data point by exact draws
    of its mixture, whatever its position in the batch."""
    return selection if module.training else "random"


def uniform_weights(rows: Tensor, num_components: int, dtype: torch.dtype) -> Tensor:
    """``[1, C]`` weights uniform over the component indices ``rows``, zero elsewhere."""
    weights = torch.zeros(1, num_components, dtype=dtype, device=rows.device)
    weights[0, rows] = 1.0 / rows.numel()
    return weights
