"""The latent linear probe on constructed latents."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from sklearn.linear_model import LogisticRegression

from mmplatform.evaluation.latent_probe import LinearProbe, fit_probes


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means with 2 OpenMP threads on 2 shared, loaded cores spins ~40x slower than 1 thread."""
    with threadpool_limits(1):
        yield


def latents(labels: np.ndarray, separation: float, seed: int, dim: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.eye(10, dim) * separation  # classes beyond dim share the origin
    return centers[labels] + rng.standard_normal((len(labels), dim))


def test_separable_subset_scores_one_and_noise_scores_near_chance():
    train_labels, test_labels = np.arange(300) % 10, np.arange(500) % 10
    # Subset 0 separable (centers 20 apart, unit noise), subset 1 independent of the label.
    train = np.stack([latents(train_labels, 20.0, 0), latents(train_labels, 0.0, 1)], axis=1)
    test = np.stack([latents(test_labels, 20.0, 2), latents(test_labels, 0.0, 3)], axis=1)
    probes = fit_probes(train, train_labels, max_iter=1000)
    accuracy = [probes[s].hits(test[:, s], test_labels).mean() for s in range(2)]
    assert accuracy[0] == 1.0
    assert accuracy[1] < 0.25  # chance is 0.1


def test_probe_predictions_are_scikit_learns():
    labels = np.arange(60) % 3
    features = latents(labels, 1.0, 4, dim=3)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(features, labels)
    np.testing.assert_array_equal(LinearProbe(features, labels, 1000).predict(features), reference.predict(features))


def test_a_single_training_class_gives_a_constant_probe():
    probe = LinearProbe(np.ones((5, 2)), np.full(5, 7), 1000)
    assert probe.hits(np.zeros((3, 2)), np.array([7, 1, 7])).tolist() == [1.0, 0.0, 1.0]


def test_multi_label_targets_are_rejected():
    with pytest.raises(ValueError, match="single labels"):
        LinearProbe(np.ones((4, 2)), np.ones((4, 3)), 1000)
    with pytest.raises(ValueError, match=r"\[N, S, D\]"):
        fit_probes(np.ones((4, 2)), np.arange(4), 1000)
