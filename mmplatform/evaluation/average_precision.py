"""Average precision per attribute, the score of multi-label datasets (MoPoE's CelebA protocol).

MoPoE scores coherence and the latent probe on CelebA by the average precision of each
attribute, averaged over attributes. Average precision is not a sum over samples, so ranks
gather the (score, label) rows rather than all-reduce counts; scikit-learn's
``average_precision_score`` computes it. An attribute with no positive sample in the evaluated
rows has no defined average precision: it is NaN and left out of every mean (reporting 0 would
read as a result). So is one whose scores are not all finite (a diverging model's generations).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score


def average_precision_per_label(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[A]`` average precision of each label from ``scores [N, A]`` (any monotone score: logits,
    probabilities) and multi-hot ``labels [N, A]``; NaN where a label has no positive."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, A]")
    values = np.full(scores.shape[1], np.nan)
    for index in range(scores.shape[1]):
        truth = labels[:, index] > 0
        if truth.any() and np.isfinite(scores[:, index]).all():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[index] = average_precision_score(truth, scores[:, index])
    return values


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the labels that have a positive; NaN if none has."""
    values = average_precision_per_label(scores, labels)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
