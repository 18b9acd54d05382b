"""Diagonal latent distributions and the batched product of Gaussian experts.

Everything here works on whole batches of posteriors at once: a distribution's parameters
have shape ``[*batch, D]`` (typically ``[M, B, D]`` for the unimodal experts or ``[S, B, D]``
for subset posteriors) and densities are summed over the event dimension ``D``.

The product of experts is the closed form behind the PoE of the MVAE (thesis, seed 000,
eq. 3.3), the subset posteriors of MoPoE (seed 001, Definition 1; thesis eq. 3.7) and the
geometric-mean dynamic prior of mmJSD (seed 004, Definition 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) with batch shape ``mu.shape[:-1]`` and event ``[D]``.

    Satisfies the ``SubsetPosterior`` protocol of ``models.aggregators.base``.
    """

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def standard(cls, like: Tensor) -> "DiagonalGaussian":
        """The prior N(0, I) with the shape of ``like``."""
        zeros = torch.zeros_like(like)
        return cls(zeros, zeros)

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def variance(self) -> Tensor:
        return self.logvar.exp()

    @property
    def batch_shape(self) -> torch.Size:
        return self.mu.shape[:-1]

    def __getitem__(self, index) -> "DiagonalGaussian":
        """Index the batch dimensions (never the event dimension)."""
        return DiagonalGaussian(self.mu[index], self.logvar[index])

    def rsample(self, num_samples: int) -> Tensor:
        """Reparameterized samples ``[K, *batch, D]``."""
        eps = torch.randn((num_samples, *self.mu.shape), dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + (0.5 * self.logvar).exp() * eps

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """Samples ``[K, *batch, D]`` and their log-density ``[K, *batch]``.

        The density is evaluated from the standard-normal noise directly
        (log N(z) = -1/2 sum(eps^2 + logvar + log 2 pi)), which avoids recomputing
        ``(z - mu)^2 / var`` and its rounding.
        """
        eps = torch.randn((num_samples, *self.mu.shape), dtype=self.mu.dtype, device=self.mu.device)
        z = self.mu + (0.5 * self.logvar).exp() * eps
        log_prob = -0.5 * (eps.square() + self.logvar + LOG_2PI).sum(-1)
        return z, log_prob

    def log_prob(self, z: Tensor) -> Tensor:
        """log-density summed over ``D``; ``z`` broadcasts against ``[*batch, D]``."""
        return -0.5 * ((z - self.mu).square() * (-self.logvar).exp() + self.logvar + LOG_2PI).sum(-1)

    def kl_standard_normal(self) -> Tensor:
        """KL(self || N(0, I)) in closed form, ``[*batch]``."""
        # Three reductions instead of one reduction over a combined [*batch, D] expression:
        # fewer full-size temporaries, which dominate the cost for [S, B, D] posteriors.
        dim = self.mu.shape[-1]
        return 0.5 * (self.logvar.exp().sum(-1) + self.mu.square().sum(-1) - self.logvar.sum(-1) - dim)

    def kl(self, other: "DiagonalGaussian") -> Tensor:
        """KL(self || other) in closed form; batch shapes broadcast."""
        return 0.5 * (
            other.logvar
            - self.logvar
            + (self.logvar.exp() + (self.mu - other.mu).square()) * (-other.logvar).exp()
            - 1.0
        ).sum(-1)


class DiagonalLaplace:
    """Factorized Laplace(loc, scale = exp(log_scale)), batch ``loc.shape[:-1]``, event ``[D]``.

    MMVAE_Hub's f-mean models use Laplace unimodal posteriors (``--qz_x laplace``,
    anchors-mmvae 3.2); the fixed-fusion models of seeds 001/004 use Gaussians.
    """

    def __init__(self, loc: Tensor, log_scale: Tensor) -> None:
        self.loc = loc
        self.log_scale = log_scale

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return 2.0 * (2.0 * self.log_scale).exp()

    def rsample(self, num_samples: int) -> Tensor:
        """Inverse-CDF reparameterization: z = loc - b sign(u) log(1 - 2|u|), u ~ U(-1/2, 1/2)."""
        shape = (num_samples, *self.loc.shape)
        # Keep u strictly inside (-1/2, 1/2) so that log(1 - 2|u|) stays finite.
        tiny = torch.finfo(self.loc.dtype).eps
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device) * (1 - 2 * tiny) - 0.5 + tiny
        return self.loc - self.log_scale.exp() * u.sign() * torch.log1p(-2.0 * u.abs())

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        z = self.rsample(num_samples)
        return z, self.log_prob(z)

    def log_prob(self, z: Tensor) -> Tensor:
        return (-(z - self.loc).abs() * (-self.log_scale).exp() - self.log_scale - math.log(2.0)).sum(-1)

    def kl_standard_normal(self) -> Tensor:
        """KL(Laplace || N(0, I)) = E_q[log q] - E_q[log p], both in closed form.

        E_q[log q] = -log(2b) - 1 (minus the entropy) and
        -E_q[log p] = 1/2 log(2 pi) + 1/2 (loc^2 + 2 b^2) (Laplace variance 2 b^2).
        """
        b2 = (2.0 * self.log_scale).exp()
        per_dim = -self.log_scale - math.log(2.0) - 1.0 + 0.5 * LOG_2PI + 0.5 * (self.loc.square() + 2.0 * b2)
        return per_dim.sum(-1)


def product_of_experts(
    mu: Tensor,
    logvar: Tensor,
    weights: Tensor,
    prior_weight: float | Tensor | None = None,
) -> DiagonalGaussian:
    """Weighted product of Gaussian experts for every row of ``weights``, all rows at once.

    Args:
        mu, logvar: ``[M, B, D]`` expert parameters.
        weights: ``[S, M]`` bool or float; row ``s`` raises expert ``m`` to the power
            ``weights[s, m]`` (``1`` for the plain PoE of seed 001 Definition 1 over the subset
            mask, ``pi_m`` for the geometric-mean dynamic prior of seed 004 Definition 3,
            ``0``/``False`` leaves the expert out).
        prior_weight: include the prior N(0, I) as one more expert with this power: a scalar
            shared by every row, or ``[S]``, one power per row (``0`` leaves the prior out of
            that row); ``None``: no prior expert in any row. The equations (seed 001 Def. 1,
            thesis eq. 3.7) have no prior expert. The MoPoE code (``poe_fusion``) and MultiVae's
            MoPoE add it with power 1 only to the product of *all* the model's modalities
            (``[S]`` weights ``1`` on that row, ``0`` elsewhere); MMVAE_Hub's ``modality_poe``
            flag adds it to every subset's product (weight ``1``). The aggregators choose with
            their ``prior_expert`` option (``models.aggregators.base.prior_expert_weights``).

    Returns:
        ``DiagonalGaussian`` with batch ``[S, B]``: precision ``w_prior + sum_m w_m / var_m`` and
        mean ``sum_m (w_m / var_m) mu_m / precision``.
    """
    return ShiftedExperts.from_experts(mu, logvar, weights, prior_weight).product()


@dataclass
class ShiftedExperts:
    """Experts in shifted precision space, ready to be summed over any rows of ``weights``.

    ``scaled = exp(-logvar - shift)`` and ``scaled_mean = scaled * mu`` (``[M, B, D]``),
    ``shift`` ``[B, D]`` the largest contributing log-precision (the logsumexp trick, one shift
    shared by all rows so that the sum over experts is one ``[S, M] @ [M, B*D]`` matmul instead
    of an ``[S, M, B, D]`` tensor). The prior expert N(0, I): ``prior`` ``[B, D]`` its shifted
    precision ``exp(-shift)`` at power 1 and ``prior_weights`` ``[S]`` its power in each row
    (both ``None`` without a prior expert). A row's product has precision ``P exp(shift)``, mean
    ``N / P`` and log-variance ``-shift - log P``, where ``P = w @ scaled (+ w_prior prior)`` and
    ``N = w @ scaled_mean`` (the prior's mean is 0: it adds precision only).
    """

    scaled: Tensor
    scaled_mean: Tensor
    shift: Tensor
    prior: Tensor | None
    weights: Tensor
    prior_weights: Tensor | None = None

    @classmethod
    def from_experts(
        cls, mu: Tensor, logvar: Tensor, weights: Tensor, prior_weight: float | Tensor | None = None
    ) -> "ShiftedExperts":
        """``prior_weight``: ``None``, a scalar for every row, or ``[S]`` per row (see
        ``product_of_experts``)."""
        w = weights.to(mu.dtype)
        neg_logvar = -logvar
        # Only experts used by some row set the shift: placeholders of missing modalities must not.
        active = w.ne(0).any(0)
        shift_source = neg_logvar.masked_fill(~active[:, None, None], float("-inf"))
        shift = shift_source.amax(0)
        if prior_weight is not None:
            # The prior's log-precision is 0; with the shift >= 0 its scaled precision stays <= 1.
            # Shared by all rows, also those without the prior (the result does not depend on it).
            shift = shift.clamp_min(0.0)
        # The result is exactly invariant to the shift, so no gradient has to flow through it.
        shift = shift.detach()
        # exp(-inf) = 0 for unused experts, so their placeholders cannot overflow into 0 * inf.
        scaled = (shift_source - shift).exp()  # in [0, 1]
        prior = prior_weights = None
        if prior_weight is not None:
            pw = torch.as_tensor(prior_weight, dtype=mu.dtype, device=mu.device)
            rows = w.shape[0]
            if pw.dim() == 0:
                pw = pw.expand(rows)
            elif pw.shape != (rows,):
                raise ValueError(
                    f"prior_weight must be a scalar or one weight per row of weights ({rows}), "
                    f"got shape {tuple(pw.shape)}"
                )
            prior = (-shift).exp()
            prior_weights = pw
        return cls(scaled, scaled * mu, shift, prior, w, prior_weights)

    def sums(self) -> tuple[Tensor, Tensor]:
        """``(P, N)`` ``[S, B, D]`` for every row of ``weights``."""
        num_modalities, batch, dim = self.scaled.shape
        precision = (self.weights @ self.scaled.reshape(num_modalities, -1)).reshape(-1, batch, dim)
        weighted_mean = (self.weights @ self.scaled_mean.reshape(num_modalities, -1)).reshape(-1, batch, dim)
        if self.prior is not None:
            precision = torch.addcmul(precision, self.prior_weights[:, None, None], self.prior)
        return precision, weighted_mean

    def product(self) -> DiagonalGaussian:
        precision, weighted_mean = self.sums()
        return DiagonalGaussian(weighted_mean / precision, (-self.shift) - precision.log())

    def selected_product(self, index: Tensor) -> DiagonalGaussian:
        """``[K, B]`` products of the rows named by ``index`` ``[K, B]``, without the other rows.

        Each selected row is a ``[M]``-weighted sum of the experts at its batch position,
        an ``[K, B, M] x [M, B, D]`` contraction: no ``[S, B, D]`` tensor is formed.
        """
        row_weights = self.weights[index]  # [K, B, M]
        precision = torch.einsum("kbm,mbd->kbd", row_weights, self.scaled)
        weighted_mean = torch.einsum("kbm,mbd->kbd", row_weights, self.scaled_mean)
        if self.prior is not None:
            precision = torch.addcmul(precision, self.prior_weights[index].unsqueeze(-1), self.prior)  # [K, B, 1] x [B, D]
        return DiagonalGaussian(weighted_mean / precision, (-self.shift) - precision.log())


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)
