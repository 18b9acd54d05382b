"""Ranking scores per label, the scores of multi-label datasets: average precision (MoPoE's CelebA
protocol) and the area under the ROC curve (MMVM's CUB and MIMIC-CXR protocol).

Both judge how well a score (a classifier's logit, a probe's probability) ranks the tuples that
have a label above those that have not, one label at a time. Neither is a sum over samples, so
ranks gather the (score, label) rows rather than all-reduce counts; scikit-learn computes them.
Where a score is undefined it is NaN and left out of every mean (reporting 0 would read as a
result): average precision of a label with no positive row, AUROC of one with no positive or no
negative row, either where the scores are not all finite (a diverging model's generations).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class RankingScore:
    compute: Callable[[np.ndarray, np.ndarray], float]
    """sklearn's ``(y_true, y_score) -> float``."""
    needs_negatives: bool
    """Whether it is undefined for a label that every row has."""


RANKING_SCORES: dict[str, RankingScore] = {
    "average_precision": RankingScore(average_precision_score, needs_negatives=False),
    "auroc": RankingScore(roc_auc_score, needs_negatives=True),
}


def ranking_score_per_label(name: str, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[A]`` ranking score ``name`` (a ``RANKING_SCORES`` key) of each label from ``scores [N, A]``
    (any monotone score: logits, probabilities) and multi-hot ``labels [N, A]``; NaN where undefined."""
    ranking = RANKING_SCORES[name]
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, A]")
    values = np.full(scores.shape[1], np.nan)
    for index in range(scores.shape[1]):
        truth = labels[:, index] > 0
        defined = truth.any() and (not ranking.needs_negatives or not truth.all())
        if defined and np.isfinite(scores[:, index]).all():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[index] = ranking.compute(truth, scores[:, index])
    return values


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the labels that have a positive; NaN if none has."""
    values = ranking_score_per_label("average_precision", scores, labels)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
