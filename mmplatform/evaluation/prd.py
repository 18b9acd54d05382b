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

Clustering backends, chosen by name (``PRDParameters.clustering``, ``CLUSTERING_BACKENDS``):

* ``torch`` (default): every pair and run of one call clustered together as batched tensor
  work on the evaluation's device (``mmplatform.evaluation.kmeans``: greedy k-means++ seeding
  with ``kmeans_n_init`` restarts, then 4 Lloyd iterations, the reference's degree of
  convergence). Its values agree with the reference's within the reference's own run-to-run
  spread (``tests/test_evaluation_prd.py``, ``benchmarks/prd_agreement.py``), ~20x faster on
  one CPU core.
* ``sklearn``: the reference code's clustering, scikit-learn's MiniBatchKMeans(n_init=10), one
  fit per pair and run on the CPU; kept to check the ``torch`` backend against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits
from torch import Tensor

from mmplatform.evaluation.kmeans import KMeansSettings, kmeans, map_batches, sets_per_call

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
    clustering: str = "torch"
    """The clustering backend, a key of ``CLUSTERING_BACKENDS``."""

    def __post_init__(self) -> None:
        if self.num_clusters < 1 or self.num_angles < 3 or self.num_runs < 1 or self.kmeans_n_init < 1:
            raise ValueError(f"invalid PRD parameters: {self}")
        if self.clustering not in CLUSTERING_BACKENDS:
            raise ValueError(
                f"unknown PRD clustering {self.clustering!r}; registered: {sorted(CLUSTERING_BACKENDS)}"
            )


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
    precision, recall = _curves(q, p, num_angles)
    return PRDCurve(precision, recall)


def _curves(q: np.ndarray, p: np.ndarray, num_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall ``[..., A]`` of histograms ``q`` (evaluated), ``p`` (reference) ``[..., K]``."""
    lam = slopes(num_angles)
    precision = np.minimum(lam[:, None] * p[..., None, :], q[..., None, :]).sum(axis=-1)
    recall = precision / lam
    # alpha <= 1 and beta <= 1 hold exactly; rounding can exceed 1 by an ulp.
    return np.clip(precision, 0.0, 1.0), np.clip(recall, 0.0, 1.0)


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


FeaturePair = tuple[np.ndarray | Tensor, np.ndarray | Tensor]
"""(evaluated features ``[n_eval, F]``, reference features ``[n_ref, F]``)."""
RunHistograms = tuple[np.ndarray, np.ndarray]
"""(evaluated, reference) normalized histograms of every run of a pair, each ``[num_runs, K]``."""


def prd_curves(pairs: Sequence[FeaturePair], params: PRDParameters, device: torch.device | str | None = None) -> list[PRDCurve]:
    """The PRD curve of every pair, each averaged over ``num_runs`` clusterings; all pairs are
    clustered in one call of the ``params.clustering`` backend (``torch``: on ``device``,
    default the CPU)."""
    checked = [_checked_pair(evaluated, reference, params) for evaluated, reference in pairs]
    if not checked:
        return []
    histograms = CLUSTERING_BACKENDS[params.clustering](checked, params, torch.device(device or "cpu"))
    curves = []
    for eval_hists, ref_hists in histograms:
        precision, recall = _curves(eval_hists, ref_hists, params.num_angles)  # [num_runs, A]
        curves.append(PRDCurve(precision.mean(axis=0), recall.mean(axis=0)))
    return curves


def prd_summaries(pairs: Sequence[FeaturePair], params: PRDParameters, device: torch.device | str | None = None) -> list[PRDSummary]:
    """``prd_summary`` of every pair, clustered together (``prd_curves``)."""
    return [
        PRDSummary(score=curve.score(), f_8=curve.max_f_beta(8.0), f_1_8=curve.max_f_beta(1.0 / 8.0))
        for curve in prd_curves(pairs, params, device)
    ]


def prd_from_features(eval_features, reference_features, params: PRDParameters, device=None) -> PRDCurve:
    """The PRD curve of one pair averaged over ``num_runs`` clusterings."""
    return prd_curves([(eval_features, reference_features)], params, device)[0]


def prd_summary(eval_features, reference_features, params: PRDParameters, device=None) -> PRDSummary:
    return prd_summaries([(eval_features, reference_features)], params, device)[0]


def _checked_pair(eval_features, reference_features, params: PRDParameters) -> tuple[Tensor, Tensor]:
    evaluated, reference = _as_matrix(eval_features, "eval"), _as_matrix(reference_features, "reference")
    if evaluated.shape[1] != reference.shape[1]:
        raise ValueError(f"feature sizes differ: {evaluated.shape[1]} vs {reference.shape[1]}")
    if params.enforce_balance and len(evaluated) != len(reference):
        raise ValueError(
            f"PRD with enforce_balance needs equal counts, got {len(evaluated)} evaluated and "
            f"{len(reference)} reference samples"
        )
    if len(evaluated) + len(reference) < params.num_clusters:
        raise ValueError(f"{len(evaluated) + len(reference)} feature vectors cannot form {params.num_clusters} clusters")
    return evaluated, reference


def _as_matrix(features, name: str) -> Tensor:
    """A ``[N, F]`` view of ``features`` (no copy: the backends convert per batch)."""
    array = torch.as_tensor(features)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name} features must be a non-empty [N, F] array, got shape {tuple(array.shape)}")
    return array


# ------------------------------------------------------------------------------ backends


def _sklearn_histograms(pairs: list[tuple[Tensor, Tensor]], params: PRDParameters, device: torch.device) -> list[RunHistograms]:
    """The reference: one MiniBatchKMeans fit per pair and run (seeded ``seed + run``), CPU, float64."""
    histograms = []
    for evaluated, reference in pairs:
        evaluated, reference = evaluated.double().cpu().numpy(), reference.double().cpu().numpy()
        runs = [
            cluster_histograms(evaluated, reference, params.num_clusters, params.kmeans_n_init, params.seed + run)
            for run in range(params.num_runs)
        ]
        histograms.append((np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs])))
    return histograms


def _torch_histograms(pairs: list[tuple[Tensor, Tensor]], params: PRDParameters, device: torch.device) -> list[RunHistograms]:
    """All pairs and runs as batched k-means on ``device``; pairs of equal sizes share a batch, as
    many as ``sets_per_call`` allows. Every pair is seeded with ``params.seed`` alone, so its
    histograms do not depend on the pairs it is batched with (nor on a rank's share of pairs)."""
    settings = KMeansSettings(n_init=params.kmeans_n_init)

    def sizes(index: int) -> tuple[int, int]:
        return len(pairs[index][0]), len(pairs[index][1])

    batches = []
    for (num_eval, num_ref), group in groupby(sorted(range(len(pairs)), key=sizes), key=sizes):
        indices = list(group)
        size = sets_per_call(num_eval + num_ref, params.num_clusters, params.num_runs, settings, device)
        batches.extend(indices[start: start + size] for start in range(0, len(indices), size))

    def cluster(chosen: list[int]) -> list[RunHistograms]:
        num_eval = len(pairs[chosen[0]][0])
        union = torch.stack([
            torch.cat([pairs[i][0], pairs[i][1]]).to(device=device, dtype=torch.float32) for i in chosen
        ])
        labels = kmeans(union, params.num_clusters, params.num_runs, [params.seed] * len(chosen), settings).labels
        eval_counts = _counts(labels[:, :, :num_eval], params.num_clusters) / num_eval
        ref_counts = _counts(labels[:, :, num_eval:], params.num_clusters) / (labels.shape[-1] - num_eval)
        return list(zip(eval_counts, ref_counts))

    histograms: list[RunHistograms | None] = [None] * len(pairs)
    for chosen, results in zip(batches, map_batches(cluster, batches, device)):
        for index, result in zip(chosen, results):
            histograms[index] = result
    return histograms


def _counts(labels: Tensor, num_clusters: int) -> np.ndarray:
    """``[P, R, n]`` cluster labels -> ``[P, R, K]`` float64 counts."""
    counts = torch.zeros(*labels.shape[:2], num_clusters, dtype=torch.float64, device=labels.device)
    counts.scatter_add_(2, labels, torch.ones(labels.shape, dtype=torch.float64, device=labels.device))
    return counts.cpu().numpy()


ClusteringBackend = Callable[[list[tuple[Tensor, Tensor]], PRDParameters, torch.device], list[RunHistograms]]
CLUSTERING_BACKENDS: dict[str, ClusteringBackend] = {
    "torch": _torch_histograms,
    "sklearn": _sklearn_histograms,
}
"""Name -> ``(checked pairs, params, device) -> per pair (eval, reference) histograms [runs, K]``."""
