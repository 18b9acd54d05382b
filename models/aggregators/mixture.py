"""Finite mixtures of diagonal Gaussians sharing one set of components.

One ``GaussianMixture`` holds ``C`` component Gaussians ``[C, B, D]`` and a weight matrix
``[R, C]``; row ``r`` is the mixture ``sum_c W[r, c] N(mu_c, sigma_c)``. This single object
covers every mixture of the fixed-fusion aggregators:

* MoE joint (thesis eq. 3.4): components = unimodal experts, one row, uniform weights;
* MoE subset posteriors: components = unimodal experts, row ``s`` = uniform over subset ``s``;
* MoPoE joint (seed 001 eq. 6 / thesis eq. 3.6): components = subset PoEs, one uniform row;
* mmJSD joint (seed 004 §3.1, MoE with weights pi renormalized without the prior).

Sampling is by component selection: draw an index per (sample, row, batch element) from
``W[r]``, gather that component's parameters (no dense work over components) and reparameterize
it; the gradient flows through the selected component only, as in the MoPoE/mmJSD code.
``log_prob`` is the exact mixture density (logsumexp over components).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.distributions import LOG_2PI, DiagonalGaussian


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

    def select(self, num_samples: int) -> Tensor:
        """Component indices ``[K, R, B]`` drawn independently from each row's weights."""
        return select_components(self.weights, num_samples, self.components.mu.shape[1])

    def rsample(self, num_samples: int) -> Tensor:
        """Reparameterized draws ``[K, R, B, D]`` by component selection."""
        return self.sample_components(self.select(num_samples))

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        z = self.rsample(num_samples)
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


def select_components(weights: Tensor, num_samples: int, batch: int) -> Tensor:
    """``[K, R, B]`` indices drawn from the rows of ``weights`` ``[R, C]``."""
    rows, _ = weights.shape
    index = torch.multinomial(weights, num_samples * batch, replacement=True)
    return index.reshape(rows, num_samples, batch).transpose(0, 1)


def uniform_weights(rows: Tensor, num_components: int, dtype: torch.dtype) -> Tensor:
    """``[1, C]`` weights uniform over the component indices ``rows``, zero elsewhere."""
    weights = torch.zeros(1, num_components, dtype=dtype, device=rows.device)
    weights[0, rows] = 1.0 / rows.numel()
    return weights
