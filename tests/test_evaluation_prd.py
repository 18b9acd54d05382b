"""PRD (Sajjadi et al. 2018) against closed forms of constructed distributions.

For histograms P (reference) and Q (evaluated), precision(lambda) = sum min(lambda P, Q) and
recall = precision / lambda; the cases below have closed forms in lambda = tan(theta).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mmplatform.evaluation.prd import (
    PRDParameters,
    f_beta,
    prd_from_features,
    prd_from_histograms,
    prd_summary,
    slopes,
)

ANGLES = 1001


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means with 2 OpenMP threads on 2 shared, loaded cores spins ~40x slower than 1 thread."""
    with threadpool_limits(1):
        yield
LAMBDA = slopes(ANGLES)


def blobs(centers: list[float], counts: list[int], seed: int, dim: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [c + 0.01 * rng.standard_normal((n, dim)) for c, n in zip(centers, counts)]
    )


def test_identical_histograms_follow_min_lambda_one():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    curve = prd_from_histograms(p, p, ANGLES)
    np.testing.assert_allclose(curve.precision, np.minimum(LAMBDA, 1.0), atol=1e-12)
    np.testing.assert_allclose(curve.recall, np.minimum(1.0, 1.0 / LAMBDA), atol=1e-12)
    # The MoPoE scalar of a perfect generator is the grid mean of min(tan, 1), whose continuous
    # limit is 1/2 + ln(2)/pi ~= 0.7206: it is not 1 (it is no area under the curve).
    assert curve.score() == pytest.approx(0.5 + math.log(2) / math.pi, abs=1e-3)
    assert curve.max_f_beta(8) == pytest.approx(1.0, abs=1e-9)
    assert curve.max_f_beta(1 / 8) == pytest.approx(1.0, abs=1e-9)


def test_half_overlapping_histograms():
    curve = prd_from_histograms(np.array([0.0, 0.5, 0.5]), np.array([0.5, 0.5, 0.0]), ANGLES)
    np.testing.assert_allclose(curve.precision, np.minimum(0.5 * LAMBDA, 0.5), atol=1e-12)
    np.testing.assert_allclose(curve.recall, np.minimum(0.5, 0.5 / LAMBDA), atol=1e-12)


def test_mode_dropping_has_precision_but_no_recall():
    # Q puts all mass on one of P's two modes: precision up to 1, recall at most 1/2.
    curve = prd_from_histograms(np.array([1.0, 0.0]), np.array([0.5, 0.5]), ANGLES)
    assert curve.precision.max() == pytest.approx(1.0) and curve.recall.max() == pytest.approx(0.5)
    # Closed forms at the corner lambda = 2 (p = 1, r = 1/2), approached on the grid.
    assert curve.max_f_beta(8) == pytest.approx(65 * 0.5 / (64 + 0.5), abs=2e-3)
    assert curve.max_f_beta(1 / 8) == pytest.approx((1 + 1 / 64) * 0.5 / (1 / 64 + 0.5), abs=2e-3)


def test_f_beta_by_hand():
    values = f_beta(np.array([1.0, 0.5, 0.0]), np.array([0.5, 0.5, 0.0]), 2.0)
    np.testing.assert_allclose(values, [5 * 0.5 / (4 + 0.5), 0.5, 0.0])


def test_histograms_must_be_distributions():
    with pytest.raises(ValueError, match="not a distribution"):
        prd_from_histograms(np.array([0.5, 0.6]), np.array([0.5, 0.5]), ANGLES)


PARAMS = PRDParameters(num_clusters=3, num_runs=3, kmeans_n_init=3)


def test_identical_feature_sets():
    features = blobs([0.0, 5.0, 10.0], [40, 30, 30], seed=0)
    summary = prd_summary(features, features.copy(), PRDParameters(num_clusters=5, num_runs=2, kmeans_n_init=2))
    assert summary.score == pytest.approx(prd_from_histograms(np.ones(2) / 2, np.ones(2) / 2, ANGLES).score())
    assert summary.f_8 == pytest.approx(1.0, abs=1e-9) and summary.f_1_8 == pytest.approx(1.0, abs=1e-9)


def test_disjoint_feature_sets_score_zero():
    summary = prd_summary(blobs([0.0], [60], 1), blobs([100.0], [60], 2), PARAMS)
    assert summary.score == 0.0 and summary.f_8 == 0.0 and summary.f_1_8 == 0.0


def test_clustering_recovers_the_constructed_histograms():
    # Three separated blobs; reference 50/50/0, evaluated 0/50/50 (the half-overlap case).
    reference = blobs([0.0, 5.0, 10.0], [30, 30, 0], seed=3)
    evaluated = blobs([0.0, 5.0, 10.0], [0, 30, 30], seed=4)
    curve = prd_from_features(evaluated, reference, PARAMS)
    np.testing.assert_allclose(curve.precision, np.minimum(0.5 * LAMBDA, 0.5), atol=1e-12)


def test_balance_is_enforced_unless_disabled():
    a, b = blobs([0.0, 5.0], [20, 20], 5), blobs([0.0, 5.0], [10, 20], 6)
    with pytest.raises(ValueError, match="equal counts"):
        prd_from_features(a, b, PARAMS)
    unbalanced = PRDParameters(num_clusters=2, num_runs=1, kmeans_n_init=2, enforce_balance=False)
    curve = prd_from_features(a, b, unbalanced)  # Q = 1/2, 1/2 and P = 1/3, 2/3
    np.testing.assert_allclose(
        curve.precision, np.minimum(LAMBDA / 3, 0.5) + np.minimum(2 * LAMBDA / 3, 0.5), atol=1e-12
    )


def test_seeded_runs_are_reproducible_and_validated():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4)) + 0.5
    params = PRDParameters(num_clusters=5, num_runs=2, kmeans_n_init=2, seed=11)
    first, second = prd_from_features(a, b, params), prd_from_features(a, b, params)
    np.testing.assert_array_equal(first.precision, second.precision)
    with pytest.raises(ValueError, match="cannot form"):
        prd_from_features(a[:2], b[:2], params)
    with pytest.raises(ValueError):
        PRDParameters(num_angles=2)
