"""The non-empty subsets of M modalities as one boolean mask ``[S, M]``, S = 2^M - 1.

Order (fixed, relied on by logging and by the aggregators' tests): by subset size, then
lexicographically by modality index, i.e. ``itertools.combinations`` order per size::

    M = 3:  m0, m1, m2, m0_m1, m0_m2, m1_m2, m0_m1_m2

so the unimodal subsets are rows ``0..M-1`` (in modality order) and the full set is the last
row. Names join the modality names with ``_`` (``m0_m2``).

A batch with missing modalities (only some keys present) uses the rows whose modalities are
all present (``available_rows``); their order is the order of the full mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor


def subset_mask(num_modalities: int) -> Tensor:
    """``[2^M - 1, M]`` bool mask of the non-empty subsets in the documented order."""
    if num_modalities < 1:
        raise ValueError("need at least one modality")
    rows = []
    for size in range(1, num_modalities + 1):
        for members in itertools.combinations(range(num_modalities), size):
            row = [False] * num_modalities
            for m in members:
                row[m] = True
            rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def subset_names(mask: Tensor, modality_names: Sequence[str]) -> list[str]:
    """One name per row, e.g. ``m0_m2``."""
    if mask.shape[-1] != len(modality_names):
        raise ValueError(f"mask has {mask.shape[-1]} modalities, names {len(modality_names)}")
    return ["_".join(n for n, used in zip(modality_names, row.tolist()) if used) for row in mask]


def present_mask(modality_names: Sequence[str], present: Sequence[str]) -> Tensor:
    """``[M]`` bool: which modalities (in model order) are in ``present``."""
    unknown = set(present) - set(modality_names)
    if unknown:
        raise KeyError(f"unknown modalities {sorted(unknown)}; model has {list(modality_names)}")
    return torch.tensor([n in present for n in modality_names], dtype=torch.bool)


def available_rows(mask: Tensor, present: Tensor) -> Tensor:
    """Indices of the rows of ``mask`` that use only modalities in ``present`` (``[M]`` bool)."""
    if not bool(present.any()):
        raise ValueError("at least one modality must be present")
    uses_missing = (mask & ~present).any(-1)
    return torch.nonzero(~uses_missing).squeeze(-1)


def rows_by_name(names: Sequence[str], wanted: Sequence[str]) -> Tensor:
    """Indices of the rows named ``wanted`` (in that order)."""
    index = {name: i for i, name in enumerate(names)}
    missing = [w for w in wanted if w not in index]
    if missing:
        raise KeyError(f"unknown subsets {missing}")
    return torch.tensor([index[w] for w in wanted], dtype=torch.long)


def unimodal_rows(mask: Tensor) -> Tensor:
    """Indices of the single-modality rows of ``mask``."""
    return torch.nonzero(mask.sum(-1) == 1).squeeze(-1)


def full_row(mask: Tensor) -> Tensor:
    """``[1]`` index of the row equal to the union of all rows (the largest subset present)."""
    union = mask.any(0)
    hits = torch.nonzero((mask == union).all(-1)).squeeze(-1)
    if hits.numel() != 1:
        raise ValueError("the subset mask has no row equal to the union of its rows")
    return hits
