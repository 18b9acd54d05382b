"""The latent linear probe on constructed latents."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from sklearn.linear_model import LogisticRegression

from mmplatform.evaluation.latent_probe import LinearProbe, ProbeSettings, fit_probes


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
    probes = fit_probes(train, train_labels, ProbeSettings())
    accuracy = [probes[s].hits(test[:, s], test_labels).mean() for s in range(2)]
    assert accuracy[0] == 1.0
    assert accuracy[1] < 0.25  # chance is 0.1


def test_probe_predictions_are_scikit_learns():
    labels = np.arange(60) % 3
    features = latents(labels, 1.0, 4, dim=3)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(features, labels)
    np.testing.assert_array_equal(LinearProbe(features, labels, ProbeSettings()).predict(features), reference.predict(features))


def test_a_single_training_class_gives_a_constant_probe():
    probe = LinearProbe(np.ones((5, 2)), np.full(5, 7), ProbeSettings())
    assert probe.hits(np.zeros((3, 2)), np.array([7, 1, 7])).tolist() == [1.0, 0.0, 1.0]


def test_multi_label_targets_are_rejected():
    with pytest.raises(ValueError, match="single labels"):
        LinearProbe(np.ones((4, 2)), np.ones((4, 3)), ProbeSettings())
    with pytest.raises(ValueError, match=r"\[N, S, D\]"):
        fit_probes(np.ones((4, 2)), np.arange(4), ProbeSettings())


def test_random_forest_probe_is_mmvms_forest_and_finds_what_a_line_cannot():
    """MMVM's protocol: a seeded random forest. On labels set by the distance from the origin (a
    ring, no linear boundary) the forest scores far above the logistic regression; its predictions
    are those of scikit-learn's forest with the same settings."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    features = rng.standard_normal((400, 2))
    labels = (np.linalg.norm(features, axis=1) > 1.1).astype(int)
    train, test = slice(0, 300), slice(300, 400)
    forest = ProbeSettings(model="random_forest", forest_trees=50, forest_depth=8, seed=3)
    probe = LinearProbe(features[train], labels[train], forest)
    reference = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=3, n_jobs=1)
    np.testing.assert_array_equal(probe.predict(features[test]), reference.fit(features[train], labels[train]).predict(features[test]))
    line = LinearProbe(features[train], labels[train], ProbeSettings())
    assert probe.hits(features[test], labels[test]).mean() > 0.85 > line.hits(features[test], labels[test]).mean() + 0.2
    with pytest.raises(ValueError, match="unknown probe model 'svm'"):
        ProbeSettings(model="svm")
