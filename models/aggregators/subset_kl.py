"""Closed-form KLs of all subset PoEs to N(0, I), without ``[S, B, D]`` tensors in memory.

MoPoE's divergence (thesis eq. 3.8) needs ``KL(PoE_s || N(0, I))`` for every subset row ``s``.
Built from ordinary ops, that is a chain of ~35 full passes over ``S x B x D`` floats per
training step (mean, log-variance, exp, square, sums and their gradients), each one a trip to
main memory: for PolyMNIST-5 at B = 256, D = 512 (16 MB per pass) it costs as much time as the
ten networks. This autograd node takes the ``[M, B, D]`` shifted experts
(``distributions.ShiftedExperts``) and works through the batch in chunks small enough to stay
in cache, recomputing the chunk's sums in backward instead of saving them; only ``[M, B, D]``
and ``[S, B]`` tensors reach memory.

Math, per row and chunk (``c = exp(-shift)``, ``P = w @ scaled (+ w_prior prior)`` with the
row's power ``w_prior`` of the prior expert, ``models.aggregators.base.prior_expert_weights``,
``N = w @ scaled_mean``, ``r = 1 / P``, ``m = N r`` the mean, ``c r`` the variance):

    KL = 1/2 sum_d (c r + m^2 - 1 + shift + log P)
    dKL/dN = m r
    dKL/dP = 1/2 r (1 - c r - 2 m^2)

and ``d/dscaled = w^T dKL/dP``, ``d/dscaled_mean = w^T dKL/dN``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.distributions import ShiftedExperts

CHUNK_BYTES = 1 << 21
"""Target size of one ``[S, chunk, D]`` temporary. Small chunks (L2-sized) lose on a loaded
machine: every chunk is a few parallel ops whose barriers wait for descheduled threads."""


def _chunks(num_rows: int, batch: int, dim: int, itemsize: int) -> list[slice]:
    size = max(1, CHUNK_BYTES // (num_rows * dim * itemsize))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def _sums(
    weights: Tensor, scaled: Tensor, scaled_mean: Tensor, prior: Tensor | None, prior_weights: Tensor | None, part: slice
) -> tuple[Tensor, Tensor]:
    """``(P, N)`` ``[S, chunk, D]`` for the batch rows ``part``; ``prior`` ``[B, D]`` enters row
    ``s`` with the power ``prior_weights[s]``.

    The chunk is a column block of the ``[M, B*D]`` view, a strided matrix BLAS reads in place
    (no copy of the chunk).
    """
    num_modalities, _, dim = scaled.shape
    columns = slice(part.start * dim, part.stop * dim)
    rows = part.stop - part.start
    precision = (weights @ scaled.reshape(num_modalities, -1)[:, columns]).reshape(-1, rows, dim)
    weighted_mean = (weights @ scaled_mean.reshape(num_modalities, -1)[:, columns]).reshape(-1, rows, dim)
    if prior is not None:
        precision.addcmul_(prior_weights[:, None, None], prior[part])
    return precision, weighted_mean


class _SubsetKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scaled, scaled_mean, weights, shift, prior, prior_weights):
        scaled, scaled_mean = scaled.contiguous(), scaled_mean.contiguous()
        num_modalities, batch, dim = scaled.shape
        num_rows = weights.shape[0]
        kl = scaled.new_empty(num_rows, batch)
        c = (-shift).exp()
        constant = shift.sum(-1) - dim  # sum_d (shift - 1), shared by all rows
        for part in _chunks(num_rows, batch, dim, scaled.element_size()):
            precision, weighted_mean = _sums(weights, scaled, scaled_mean, prior, prior_weights, part)
            reciprocal = precision.reciprocal()
            mean = weighted_mean.mul_(reciprocal)
            total = precision.log_().sum(-1)
            total += reciprocal.mul_(c[part]).sum(-1)
            total += mean.square().sum(-1)
            kl[:, part] = 0.5 * (total + constant[part])
        ctx.save_for_backward(scaled, scaled_mean, weights, c, prior, prior_weights)
        ctx.has_prior = prior is not None
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        scaled, scaled_mean, weights, c, prior, prior_weights = ctx.saved_tensors
        scaled, scaled_mean = scaled.contiguous(), scaled_mean.contiguous()  # no-ops: made so in forward
        prior, prior_weights = (prior, prior_weights) if ctx.has_prior else (None, None)
        num_modalities, batch, dim = scaled.shape
        num_rows = weights.shape[0]
        grad_scaled = torch.empty_like(scaled)
        grad_scaled_mean = torch.empty_like(scaled_mean)
        transposed = weights.t()
        for part in _chunks(num_rows, batch, dim, scaled.element_size()):
            precision, weighted_mean = _sums(weights, scaled, scaled_mean, prior, prior_weights, part)
            g = grad_kl[:, part].unsqueeze(-1)
            reciprocal = precision.reciprocal_()
            mean = weighted_mean.mul_(reciprocal)
            # dKL/dN = g m r
            grad_n = (g * mean).mul_(reciprocal)
            # dKL/dP = 1/2 g r (1 - c r - 2 m^2)
            grad_p = torch.mul(reciprocal, c[part]).neg_().add_(1.0).addcmul_(mean, mean, value=-2.0)
            grad_p.mul_(reciprocal).mul_(0.5 * g)
            rows = grad_p.shape[1]
            grad_scaled[:, part] = (transposed @ grad_p.reshape(num_rows, -1)).reshape(num_modalities, rows, dim)
            grad_scaled_mean[:, part] = (transposed @ grad_n.reshape(num_rows, -1)).reshape(num_modalities, rows, dim)
        return grad_scaled, grad_scaled_mean, None, None, None, None


def subset_kls(experts: ShiftedExperts) -> Tensor:
    """``[S, B]`` KL(PoE_s || N(0, I)) for every row of ``experts.weights``, each row with the
    prior expert at its own power ``experts.prior_weights`` (if any)."""
    return _SubsetKL.apply(
        experts.scaled, experts.scaled_mean, experts.weights, experts.shift, experts.prior, experts.prior_weights
    )
