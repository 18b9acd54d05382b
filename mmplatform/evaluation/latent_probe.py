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

The classifier is chosen from ``PROBE_MODELS`` (``evaluation.probe_model``):

* ``logistic_regression`` (default): scikit-learn's ``LogisticRegression(max_iter=1000)`` with
  the lbfgs solver as in MoPoE (``random_state=0``, ignored by lbfgs but kept for solvers that use it);
* ``random_forest``: MMVM's MIMIC-CXR protocol (seeds-digest 2.4): ``RandomForestClassifier`` with
  5,000 trees of depth at most 30 (``probe_forest_trees``, ``probe_forest_depth``), seeded, one
  process. MMVM fits it on "a subset of the training set" of unimodal representations: here the
  same seeded training rows as the other probe, per subset posterior, the unimodal ones included.

Multi-label datasets (CelebA's attributes, CUB's colours, MIMIC's findings) get one probe per
attribute (``MultiLabelProbe``), scored by ranking scores of its probabilities (average precision
as MoPoE does on CelebA, AUROC as MMVM does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class ProbeSettings:
    model: str = "logistic_regression"
    """A ``PROBE_MODELS`` key."""
    max_iter: int = 1000
    """Logistic regression's iterations."""
    forest_trees: int = 5000
    forest_depth: int = 30
    seed: int = 0
    """Seeds the random forest."""

    def __post_init__(self) -> None:
        if self.model not in PROBE_MODELS:
            raise ValueError(f"unknown probe model {self.model!r}; registered: {sorted(PROBE_MODELS)}")


PROBE_MODELS: dict[str, Callable[[ProbeSettings], ClassifierMixin]] = {
    "logistic_regression": lambda settings: LogisticRegression(max_iter=settings.max_iter, random_state=0),
    "random_forest": lambda settings: RandomForestClassifier(
        n_estimators=settings.forest_trees, max_depth=settings.forest_depth, random_state=settings.seed, n_jobs=1),
}


class LinearProbe:
    """A fitted probe (linear unless ``settings`` picks another model); a training set with a
    single class gives a constant predictor.

    (A tiny ``sample_limit`` sweep can draw a single class; scikit-learn refuses to fit that,
    and predicting the only class seen is what any classifier would learn from it.)
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, settings: ProbeSettings) -> None:
        features, labels = _check(features, labels)
        classes = np.unique(labels)
        self._constant = classes[0] if len(classes) == 1 else None
        self._model = None
        if self._constant is None:
            self._model = PROBE_MODELS[settings.model](settings)
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

    def __init__(self, features: np.ndarray, labels: np.ndarray, settings: ProbeSettings) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a multi-label probe needs labels [N, A], got shape {labels.shape}")
        self.probes = [LinearProbe(features, labels[:, a], settings) for a in range(labels.shape[1])]

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


def fit_multilabel_probes(train_means: np.ndarray, train_labels: np.ndarray,
                          settings: ProbeSettings) -> list[MultiLabelProbe]:
    """One multi-label probe per subset from ``train_means`` ``[N, S, D]`` and labels ``[N, A]``."""
    train_means = np.asarray(train_means)
    if train_means.ndim != 3:
        raise ValueError(f"training means must be [N, S, D], got shape {train_means.shape}")
    return [MultiLabelProbe(train_means[:, s], train_labels, settings) for s in range(train_means.shape[1])]


def fit_probes(train_means: np.ndarray, train_labels: np.ndarray, settings: ProbeSettings) -> list[LinearProbe]:
    """One probe per subset from ``train_means`` ``[N, S, D]`` and labels ``[N]``."""
    train_means = np.asarray(train_means)
    if train_means.ndim != 3:
        raise ValueError(f"training means must be [N, S, D], got shape {train_means.shape}")
    return [LinearProbe(train_means[:, s], train_labels, settings) for s in range(train_means.shape[1])]


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"the latent probe supports single labels [N] only, got shape {labels.shape}")
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} do not match labels {labels.shape}")
    return features, labels
