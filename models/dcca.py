"""The Deep CCA objective: total canonical correlation between network outputs.

JNF-DCCA (Senellart et al. 2023, Section 2.3 and Appendix B) trains one network ``g_i`` per
modality with the Deep CCA objective of Andrew et al. (2013). For two views ``H1 [N, d1]``,
``H2 [N, d2]`` (the outputs over a batch) the total correlation is

    ``F(H1, H2) = sum of the singular values of T = S11^{-1/2} S12 S22^{-1/2}``

(the singular values of ``T`` are the canonical correlations), with the centered covariances

    ``Sij = Hi_c^T Hj_c / (N - 1)`` and ``Sii = Hi_c^T Hi_c / (N - 1) + r I``.

The paper's extracted text prints the exponents as ``1/2``; Andrew et al. and the standard
definition have ``-1/2``, used here. ``top_k`` keeps the ``k`` largest correlations only. For
``M > 2`` modalities the objective is ``sum_{i<j} F(g_i(X_i), g_j(X_j))``.

Why the ridge ``r`` (default 1e-4): ``Sii`` is singular whenever ``N - 1 < d_i`` or features
are collinear or constant (dead units), and then ``Sii^{-1/2}`` does not exist; unregularized
CCA would even report correlations of exactly 1 from such directions. ``+ r I`` bounds the
eigenvalues below by ``r``, so the whitening and its gradient stay bounded and every
correlation is < 1. It is absolute, not relative: it biases a correlation by about
``r / variance``, negligible for outputs of unit-order scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _InverseSqrt(torch.autograd.Function):
    """``S^{-1/2}`` of a symmetric positive definite ``S`` by ``eigh``, with a stable backward.

    Autograd through ``eigh`` divides by eigenvalue gaps ``lam_j - lam_i``: with two dead units
    (or ``N - 1 < d``) several eigenvalues equal ``r`` and the gradient is NaN or badly
    cancelled. The derivative of a spectral function needs only the divided differences of
    ``f`` (Daleckii-Krein); for ``f(l) = l^{-1/2}`` with ``s = sqrt(l)`` they have the gap-free
    closed form ``(f(l_i) - f(l_j)) / (l_i - l_j) = -1 / (s_i s_j (s_i + s_j))``, which is also
    ``f'(l_i)`` at ``i = j``.
    """

    @staticmethod
    def forward(ctx, sigma: Tensor) -> Tensor:
        lam, vectors = torch.linalg.eigh(sigma)
        # Eigenvalues below eps * largest are rounding noise (only reachable with ridge 0).
        floor = torch.finfo(lam.dtype).eps * lam.max().clamp_min(torch.finfo(lam.dtype).tiny)
        roots = lam.clamp_min(floor).sqrt()
        ctx.save_for_backward(vectors, roots)
        return (vectors / roots) @ vectors.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        vectors, roots = ctx.saved_tensors
        outer = roots[:, None] * roots[None, :]
        divided = -1.0 / (outer * (roots[:, None] + roots[None, :]))
        rotated = vectors.mT @ (0.5 * (grad + grad.mT)) @ vectors
        return vectors @ (divided * rotated) @ vectors.mT


def _check(views: Sequence[Tensor], ridge: float, top_k: int | None) -> None:
    shapes = ", ".join(str(tuple(view.shape)) for view in views)
    if any(view.dim() != 2 for view in views):
        raise ValueError(f"every view must be 2-D [N, d]; got shapes {shapes}")
    sizes = {view.shape[0] for view in views}
    if len(sizes) != 1 or sizes.pop() <= 1:
        raise ValueError(f"views need the same batch size N >= 2; got shapes {shapes}")
    if len({view.dtype for view in views}) != 1 or not views[0].is_floating_point():
        raise ValueError(f"views need one floating dtype; got {[view.dtype for view in views]}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")


def pairwise_total_correlation(
    views: Sequence[Tensor], ridge: float = 1e-4, top_k: int | None = None
) -> Tensor:
    """``sum_{i<j} F(views[i], views[j])``: a 0-d tensor, differentiable w.r.t. every view.

    ``top_k`` larger than a pair's ``min(d_i, d_j)`` keeps all of that pair's correlations.
    """
    views = list(views)
    if len(views) < 2:
        raise ValueError(f"the total correlation needs at least 2 views, got {len(views)}")
    _check(views, ridge, top_k)
    n = views[0].shape[0]
    centered = [view - view.mean(dim=0, keepdim=True) for view in views]
    # Each view's whitening S_ii^{-1/2} is shared by its M - 1 pairs: computed once.
    whiteners = []
    for h in centered:
        eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
        whiteners.append(_InverseSqrt.apply(h.mT @ h / (n - 1) + ridge * eye))
    totals = []
    for i, j in combinations(range(len(views)), 2):
        t = whiteners[i] @ (centered[i].mT @ centered[j] / (n - 1)) @ whiteners[j]
        # svdvals rather than sqrt(eigvalsh(T^T T)): its backward is U diag(g) V^T, with no
        # division by singular-value gaps (repeated correlations, e.g. several zeros, are fine)
        # and no infinite derivative of sqrt at a zero correlation. Sorted descending.
        totals.append(torch.linalg.svdvals(t)[:top_k].sum())
    return torch.stack(totals).sum()


def total_correlation(h1: Tensor, h2: Tensor, ridge: float = 1e-4, top_k: int | None = None) -> Tensor:
    """``F(h1, h2)``: the sum of the (``top_k`` largest) canonical correlations, 0-d."""
    return pairwise_total_correlation((h1, h2), ridge=ridge, top_k=top_k)


def dcca_loss(views: Sequence[Tensor], ridge: float = 1e-4, top_k: int | None = None) -> Tensor:
    """The Deep CCA loss to minimize: ``-pairwise_total_correlation(views)``."""
    return -pairwise_total_correlation(views, ridge=ridge, top_k=top_k)
