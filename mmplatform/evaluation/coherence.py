"""Generation coherence: do generated modalities carry the label of the input they came from?

Protocol (MoPoE, Sutter et al. 2021, section 5; thesis seed 000, section 5.2.2 and Table 6.2):

* conditional: for every non-empty subset S of the input modalities, infer q(z | X_S), decode
  every modality m and classify it with the pretrained classifier of m; the (S, m) coherence
  is the fraction of samples classified as the true label.
* ``coherence_missing``: mean of the (S, m) coherences over the pairs with m not in S
  (cross-modal generation); ``coherence_reconstruction``: over the pairs with m in S.
  ``coherence``: mean over all pairs (thesis Fig. 6.6).
* random: decode prior samples into all modalities; a tuple is coherent when all classifiers
  agree on its class.

Everything is kept as counts (``hits``, ``total``) so that ranks can all-reduce sums before
dividing; a fraction is formed only once, at the end.

How a classifier output is judged depends on the label kind, so scorers are registered by the
manifest's ``label_kind``. Only ``single`` (argmax == label) exists now. Multi-label datasets
(CelebA, MIMIC-CXR) report average precision in the papers, which is not a sum over samples:
registering it needs a scorer whose state is gathered rather than summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class CoherenceScorer:
    """Per-sample coherence judgements for one label kind (values in [0, 1], summable)."""

    hits: Callable[[Tensor, Tensor], Tensor]
    """``(logits [N, C], labels [N, ...]) -> [N]``: 1 where the generated sample is coherent."""

    agreement: Callable[[Sequence[Tensor]], Tensor]
    """``([N, C] logits per modality) -> [N]``: 1 where all modalities' classes agree."""


def _single_label_hits(logits: Tensor, labels: Tensor) -> Tensor:
    if labels.dim() != 1:
        raise ValueError(f"single-label coherence needs labels of shape [N], got {tuple(labels.shape)}")
    return (logits.argmax(dim=-1) == labels.to(logits.device)).to(torch.float64)


def _single_label_agreement(logits_per_modality: Sequence[Tensor]) -> Tensor:
    if not logits_per_modality:
        raise ValueError("random coherence needs at least one classified modality")
    predictions = torch.stack([logits.argmax(dim=-1) for logits in logits_per_modality])  # [M, N]
    return (predictions == predictions[:1]).all(dim=0).to(torch.float64)


COHERENCE_SCORERS: dict[str, CoherenceScorer] = {
    "single": CoherenceScorer(hits=_single_label_hits, agreement=_single_label_agreement),
}


def register_coherence_scorer(label_kind: str, scorer: CoherenceScorer) -> None:
    if label_kind in COHERENCE_SCORERS:
        raise ValueError(f"a coherence scorer for label kind {label_kind!r} is already registered")
    COHERENCE_SCORERS[label_kind] = scorer


def coherence_scorer(label_kind: str) -> CoherenceScorer:
    if label_kind not in COHERENCE_SCORERS:
        raise KeyError(
            f"no coherence scorer for label kind {label_kind!r}; registered: {sorted(COHERENCE_SCORERS)}"
        )
    return COHERENCE_SCORERS[label_kind]


@dataclass
class CoherenceCounts:
    """Summable coherence state: ``hits`` and ``total`` of shape ``[S, M]`` (float64)."""

    hits: Tensor
    total: Tensor

    @classmethod
    def zeros(cls, num_subsets: int, num_modalities: int) -> "CoherenceCounts":
        shape = (num_subsets, num_modalities)
        return cls(torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64))

    def add(self, subset: int, modality: int, hits: Tensor) -> None:
        self.hits[subset, modality] += float(hits.sum())
        self.total[subset, modality] += hits.numel()

    def accuracy(self) -> np.ndarray:
        """``[S, M]`` fractions; NaN where nothing was counted (not 0, which would be a result)."""
        hits, total = self.hits.numpy(), self.total.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, hits / np.maximum(total, 1), np.nan)


def coherence_summaries(accuracy: np.ndarray, subsets: np.ndarray) -> dict[str, float]:
    """Table 6.2 summaries from the ``[S, M]`` accuracies and the boolean subset mask ``[S, M]``.

    Each (subset, modality) pair weighs the same (the thesis averages accuracies, and every
    pair is evaluated on the same samples). A summary with no pair is left out: with one
    modality there is no missing modality to generate.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=bool)
    if accuracy.shape != subsets.shape:
        raise ValueError(f"accuracy {accuracy.shape} and subset mask {subsets.shape} differ in shape")
    selections = {"missing": ~subsets, "reconstruction": subsets, "all": np.ones_like(subsets)}
    return {kind: float(accuracy[chosen].mean()) for kind, chosen in selections.items() if chosen.any()}
