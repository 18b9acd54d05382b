"""The generalized f-mean over the modalities of every subset, all subsets at once.

Thesis (seed 000) eq. 4.1: ``M_f(p) = f^-1( (1/N) sum_i f(p_i) )`` for an invertible ``f``.
Here the ``N`` values are the ``M`` modalities' values (posterior parameters or samples) and
each subset ``s`` of a ``[S, M]`` mask (``models.subsets``) takes the mean over its own
members: with weights ``w[s, m] = mask[s, m] / |s|`` the f-mean of every subset is

    ``M_f[s] = f^-1( sum_m w[s, m] f(p_m) )``,

computed with one forward pass of ``f`` over the ``M`` values, one ``[S, M]`` contraction and
one inverse pass over the ``S`` means (no Python loop over subsets). Non-uniform weights
(a weighted quasi-arithmetic mean) are accepted as well; every row is normalized to sum to 1.

``f`` is a :class:`models.flows.Flow` (log-determinants available) or any plain invertible
element-wise map given as :class:`Bijection` (used for the classical identities: affine f
gives the arithmetic mean, ``log`` the geometric mean, the reciprocal the harmonic mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from models.flows import Flow


@dataclass(frozen=True)
class Bijection:
    """A plain invertible map given by its two directions (no log-determinant)."""

    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]


AFFINE_IDENTITY = Bijection(lambda x: x, lambda y: y)
LOG = Bijection(torch.log, torch.exp)
RECIPROCAL = Bijection(torch.reciprocal, torch.reciprocal)

Invertible = Flow | Bijection


@dataclass
class FMeanResult:
    """An f-mean and the intermediate quantities the f-mean aggregators need.

    ``log_det_forward`` / ``log_det_inverse`` are ``None`` for a :class:`Bijection`.
    """

    value: Tensor
    """``[S, *batch, D]``: ``f^-1(mean_f)``, the f-mean of every row of the weights (only the
    entries selected by ``fmean_full``'s ``invert_index`` when one is given)."""

    transformed: Tensor
    """``[M, *batch, D]``: ``f(p_m)``."""

    mean_transformed: Tensor
    """``[S, *batch, D]``: ``sum_m w[s, m] f(p_m)``, the mean in f-space."""

    log_det_forward: Tensor | None
    """``[M, *batch]``: ``log|det J_f(p_m)|``."""

    log_det_inverse: Tensor | None
    """``[S, *batch]``: ``log|det J_{f^-1}(mean_transformed)|`` (selected entries, as ``value``)."""


def normalized_weights(weights: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows of a bool mask or non-negative weights ``[S, M]`` scaled to sum to 1."""
    w = weights.to(dtype)
    if (w < 0).any():
        raise ValueError("f-mean weights must be non-negative")
    total = w.sum(-1, keepdim=True)
    if (total == 0).any():
        raise ValueError("every subset of an f-mean needs at least one member (empty row in the mask)")
    return w / total


def transform(f: Invertible, x: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor | None]:
    """Apply ``f`` (or its inverse); the log-det is ``None`` for plain bijections."""
    if isinstance(f, Flow):
        return f.inverse(x) if inverse else f(x)
    return (f.inverse(x) if inverse else f.forward(x)), None


def weighted_sum(weights: Tensor, values: Tensor) -> Tensor:
    """``[S, M] x [M, *rest] -> [S, *rest]`` as one matmul."""
    num_modalities = values.shape[0]
    flat = values.reshape(num_modalities, -1)
    return (weights.to(values.dtype) @ flat).reshape(weights.shape[0], *values.shape[1:])


def fmean_full(values: Tensor, weights: Tensor | None, f: Invertible, invert_index=None) -> FMeanResult:
    """The f-mean of every row of ``weights`` plus its intermediate quantities.

    Args:
        values: ``[M, *batch, D]`` (``D`` is the flow's event dimension; for a
            :class:`Bijection` any trailing shape).
        weights: ``[S, M]`` bool mask or non-negative weights; ``None`` means one row that
            averages all ``M`` values.
        f: a :class:`Flow` or a :class:`Bijection`.
        invert_index: optional index into the leading ``[S, *batch]`` dimensions of
            ``mean_transformed`` (e.g. a tensor of rows, or ``(rows, slice(0, K))``): only those
            entries go through ``f^-1``, and ``value`` / ``log_det_inverse`` hold only them.
            For callers that discard the other rows' f-means (the inverse pass is the
            expensive part for a flow); ``None`` inverts everything.
    """
    num_modalities = values.shape[0]
    if weights is None:
        weights = torch.ones(1, num_modalities, dtype=torch.bool, device=values.device)
    if weights.dim() != 2 or weights.shape[1] != num_modalities:
        raise ValueError(f"weights must be [S, {num_modalities}], got {tuple(weights.shape)}")
    w = normalized_weights(weights, values.dtype)
    # Placeholders of modalities that no row uses (missing modalities) are replaced by 1, a
    # point inside the domain of log and the reciprocal too, before f: a NaN/inf there would
    # otherwise reach the sums as 0 * inf and the flow's parameter gradients as 0 * NaN.
    used = w.ne(0).any(0).reshape(num_modalities, *([1] * (values.dim() - 1)))
    values = torch.where(used, values, torch.ones_like(values))
    transformed, log_det_forward = transform(f, values)
    mean_transformed = weighted_sum(w, transformed)
    to_invert = mean_transformed if invert_index is None else mean_transformed[invert_index]
    if to_invert.numel() == 0:  # nothing selected (flows cannot reshape an empty batch)
        value, log_det_inverse = to_invert, (to_invert.sum(-1) if isinstance(f, Flow) else None)
    else:
        value, log_det_inverse = transform(f, to_invert, inverse=True)
    return FMeanResult(value, transformed, mean_transformed, log_det_forward, log_det_inverse)


def fmean(values: Tensor, weights: Tensor | None, f: Invertible) -> Tensor:
    """``f^-1( sum_m w[s, m] f(values_m) )`` for every row ``s``: ``[M, ...] -> [S, ...]``.

    Seed 000 eq. 4.1 (with the subset mask's uniform weights, eq. 4.2 / 4.6 / 4.20).
    """
    return fmean_full(values, weights, f).value
