"""Precision and recall for distributions (PRD), Sajjadi et al. 2018, arXiv:1806.00035.

Definitions (paper, section 3 and Theorem 2), for a reference distribution P (real data) and
an evaluated distribution Q (generated data) over the same finite support:

    alpha(lambda) = sum_w min(lambda * P(w), Q(w))     precision
    beta(lambda)  = alpha(lambda) / lambda             recall

for slopes lambda = tan(theta), theta on an equiangular grid of (0, pi/2) (section 4).
Continuous features are reduced to that finite support by clustering the union of both
feature sets with k-means and taking each set's histogram over the clusters; the curves of
several clusterings are averaged (section 4, "num_runs").

Summaries:

* ``F_beta`` = max over the curve of (1 + beta^2) p r / (beta^2 p + r); the paper reports
  F_8 (recall-weighted) and F_{1/8} (precision-weighted) (section 4, eq. 9).
* ``score``: the single number MoPoE and MMVAE_Hub log as "PRD" and the thesis reports in
  Table 6.3: the mean of the concatenated precision and recall arrays. It is not an area
  under the curve: two identical distributions score mean(min(tan theta, 1)) ~= 0.72, not 1.

Implemented from these definitions with scikit-learn's MiniBatchKMeans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits

ANGLE_EPSILON = 1e-10
"""Keeps the grid off 0 and pi/2, where tan is 0 (recall = 0/0) or infinite."""


@dataclass(frozen=True)
class PRDParameters:
    """Defaults are the reference values (anchors-mmvae 4.5): 20 clusters, 1001 angles, 10 runs."""

    num_clusters: int = 20
    num_angles: int = 1001
    num_runs: int = 10
    kmeans_n_init: int = 10
    enforce_balance: bool = True
    """Refuse unequal sample counts: unequal sets bias the cluster assignment toward the larger one."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clusters < 1 or self.num_angles < 3 or self.num_runs < 1 or self.kmeans_n_init < 1:
            raise ValueError(f"invalid PRD parameters: {self}")


@dataclass(frozen=True)
class PRDCurve:
    precision: np.ndarray
    recall: np.ndarray

    def score(self) -> float:
        """The MoPoE/thesis scalar: mean over the concatenated precision and recall arrays."""
        return float(np.mean(np.concatenate([self.precision, self.recall])))

    def max_f_beta(self, beta: float) -> float:
        return float(np.max(f_beta(self.precision, self.recall, beta)))


@dataclass(frozen=True)
class PRDSummary:
    score: float
    f_8: float
    """max F_8: weighs recall (coverage of the real distribution)."""
    f_1_8: float
    """max F_{1/8}: weighs precision (generated samples that look real)."""


def f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    """Elementwise F_beta, 0 where precision and recall are both 0."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    denominator = beta**2 * precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (1 + beta**2) * precision * recall / denominator
    return np.where(denominator > 0, values, 0.0)


def slopes(num_angles: int) -> np.ndarray:
    angles = np.linspace(ANGLE_EPSILON, np.pi / 2 - ANGLE_EPSILON, num_angles)
    return np.tan(angles)


def prd_from_histograms(eval_distribution: np.ndarray, reference_distribution: np.ndarray, num_angles: int) -> PRDCurve:
    """The curve of two distributions over the same bins (each must sum to 1)."""
    q = np.asarray(eval_distribution, dtype=np.float64)
    p = np.asarray(reference_distribution, dtype=np.float64)
    if q.shape != p.shape or q.ndim != 1:
        raise ValueError(f"histograms must be 1-D of equal length, got {q.shape} and {p.shape}")
    for name, dist in (("eval", q), ("reference", p)):
        if np.any(dist < 0) or not np.isclose(dist.sum(), 1.0):
            raise ValueError(f"the {name} histogram is not a distribution (sum {dist.sum()})")
    lam = slopes(num_angles)[:, None]
    precision = np.minimum(lam * p[None, :], q[None, :]).sum(axis=1)
    recall = precision / lam[:, 0]
    # alpha <= 1 and beta <= 1 hold exactly; rounding can exceed 1 by an ulp.
    return PRDCurve(np.clip(precision, 0.0, 1.0), np.clip(recall, 0.0, 1.0))


def cluster_histograms(
    eval_features: np.ndarray, reference_features: np.ndarray, num_clusters: int, n_init: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union of both sets, return each set's normalized histogram over the clusters."""
    union = np.concatenate([eval_features, reference_features], axis=0)
    if union.shape[0] < num_clusters:
        raise ValueError(f"{union.shape[0]} feature vectors cannot form {num_clusters} clusters")
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed)
    # One OpenMP/BLAS thread: each step is a 1024 x 20 x 128 problem, far too small to split, and
    # on a busy machine sklearn's threads wait on each other: measured 0.34 s per clustering with
    # 1 thread vs 2.2-7.7 s with 2 on a shared 2-core box (benchmarks/evaluation.py). The pairs
    # themselves are independent and are what should run in parallel (ranks, processes).
    with threadpool_limits(limits=1):
        assignments = kmeans.fit_predict(union)
    eval_assign, ref_assign = assignments[: len(eval_features)], assignments[len(eval_features):]
    eval_hist = np.bincount(eval_assign, minlength=num_clusters) / len(eval_assign)
    ref_hist = np.bincount(ref_assign, minlength=num_clusters) / len(ref_assign)
    return eval_hist, ref_hist


def prd_from_features(eval_features: np.ndarray, reference_features: np.ndarray, params: PRDParameters) -> PRDCurve:
    """The PRD curve averaged over ``num_runs`` clusterings (seeded ``seed``, ``seed + 1``, ...)."""
    eval_features = _as_matrix(eval_features, "eval")
    reference_features = _as_matrix(reference_features, "reference")
    if eval_features.shape[1] != reference_features.shape[1]:
        raise ValueError(f"feature sizes differ: {eval_features.shape[1]} vs {reference_features.shape[1]}")
    if params.enforce_balance and len(eval_features) != len(reference_features):
        raise ValueError(
            f"PRD with enforce_balance needs equal counts, got {len(eval_features)} evaluated and "
            f"{len(reference_features)} reference samples"
        )
    curves = []
    for run in range(params.num_runs):
        eval_hist, ref_hist = cluster_histograms(
            eval_features, reference_features, params.num_clusters, params.kmeans_n_init, params.seed + run
        )
        curves.append(prd_from_histograms(eval_hist, ref_hist, params.num_angles))
    return PRDCurve(
        precision=np.mean([c.precision for c in curves], axis=0),
        recall=np.mean([c.recall for c in curves], axis=0),
    )


def prd_summary(eval_features: np.ndarray, reference_features: np.ndarray, params: PRDParameters) -> PRDSummary:
    curve = prd_from_features(eval_features, reference_features, params)
    return PRDSummary(score=curve.score(), f_8=curve.max_f_beta(8.0), f_1_8=curve.max_f_beta(1.0 / 8.0))


def _as_matrix(features, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name} features must be a non-empty [N, F] array, got shape {array.shape}")
    return array
