"""Linear probe of the latent space: how linearly separable are the subset posteriors?

Protocol (thesis seed 000, section 5.2.1; MoPoE ``train_clf_lr_all_subsets``): for every
subset posterior, a logistic regression is trained on the posterior **means** of a fixed
number of encoded training samples (thesis: 1000) and evaluated on the encoded test set with
hard predictions; the reported number is the accuracy per subset (and its mean over subsets,
thesis Fig. 6.4).

Training rows are a uniform sample *without* replacement of the encoded training samples the
caller streams, chosen by a seeded hash of each sample's key (``key_sample``), so the same rows
are chosen whatever the number of ranks. MoPoE draws with replacement (``np.random.randint``);
duplicates add no information, and for 1000 of 60000 rows the two differ by ~8 duplicates.

The classifier is scikit-learn's ``LogisticRegression(max_iter=1000)`` with the lbfgs solver
as in MoPoE (``random_state=0``, ignored by lbfgs but kept for solvers that use it).

Multi-label datasets (CelebA's attributes) get one probe per attribute (``MultiLabelProbe``),
scored by average precision of its probabilities as MoPoE does on CelebA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class ProbeParameters:
    train_samples: int = 1000
    max_iter: int = 1000
    seed: int = 0
    """Selects the training rows: see ``mmplatform.evaluation.key_sample``."""


class LinearProbe:
    """A fitted probe; a training set with a single class gives a constant predictor.

    (A tiny ``sample_limit`` sweep can draw a single class; scikit-learn refuses to fit that,
    and predicting the only class seen is what any classifier would learn from it.)
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, max_iter: int) -> None:
        features, labels = _check(features, labels)
        classes = np.unique(labels)
        self._constant = classes[0] if len(classes) == 1 else None
        self._model = None
        if self._constant is None:
            self._model = LogisticRegression(max_iter=max_iter, random_state=0)
            self._model.fit(features, labels)

    def predict(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if self._model is None:
            return np.full(len(features), self._constant)
        return self._model.predict(features)

    def hits(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``[N]`` 1.0 where the prediction is the label (summable across ranks)."""
        features, labels = _check(features, labels)
        return (self.predict(features) == labels).astype(np.float64)


class MultiLabelProbe:
    """One ``LinearProbe`` per attribute of multi-hot labels ``[N, A]``; ``scores`` are the
    positive-class probabilities ``[N, A]`` (an attribute seen with one value only scores that
    value, 0 or 1, for every row)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, max_iter: int) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a multi-label probe needs labels [N, A], got shape {labels.shape}")
        self.probes = [LinearProbe(features, labels[:, a], max_iter) for a in range(labels.shape[1])]

    def scores(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        columns = []
        for probe in self.probes:
            if probe._model is None:
                columns.append(np.full(len(features), float(probe._constant)))
            else:
                positive = list(probe._model.classes_).index(1)
                columns.append(probe._model.predict_proba(features)[:, positive])
        return np.stack(columns, axis=1)


def fit_multilabel_probes(train_means: np.ndarray, train_labels: np.ndarray, max_iter: int) -> list[MultiLabelProbe]:
    """One multi-label probe per subset from ``train_means`` ``[N, S, D]`` and labels ``[N, A]``."""
    train_means = np.asarray(train_means)
    if train_means.ndim != 3:
        raise ValueError(f"training means must be [N, S, D], got shape {train_means.shape}")
    return [MultiLabelProbe(train_means[:, s], train_labels, max_iter) for s in range(train_means.shape[1])]


def fit_probes(train_means: np.ndarray, train_labels: np.ndarray, max_iter: int) -> list[LinearProbe]:
    """One probe per subset from ``train_means`` ``[N, S, D]`` and labels ``[N]``."""
    train_means = np.asarray(train_means)
    if train_means.ndim != 3:
        raise ValueError(f"training means must be [N, S, D], got shape {train_means.shape}")
    return [LinearProbe(train_means[:, s], train_labels, max_iter) for s in range(train_means.shape[1])]


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"the latent probe supports single labels [N] only, got shape {labels.shape}")
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} do not match labels {labels.shape}")
    return features, labels
