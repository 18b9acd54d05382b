"""Batched k-means in torch: many independent clusterings as one set of tensor operations.

PRD (Sajjadi et al. 2018, "Assessing Generative Models via Precision and Recall",
arXiv:1806.00035, section 4) reduces two feature sets to histograms by clustering their union
with k-means, 20 clusters, and averages the curves of 10 clusterings ("runs"); their reference
code uses scikit-learn's MiniBatchKMeans with ``n_init=10``. An evaluation has 160 such pairs
(31 subsets x 5 modalities + 5 prior pairs on PolyMNIST-5), so 1,600 clusterings. Here they
are one batch on the evaluation's device: ``points`` is ``[P, N, F]`` (P point sets, the pairs'
unions), each set is clustered ``runs`` times, and every step below is a batched matmul or a
batched elementwise operation over all ``P x runs`` clusterings at once.

Algorithm, per point set (all sets and runs in parallel):

1. Samples. One seeded permutation of the N points: its first ``fit_samples`` points are the
   *fit sample* (all points when N is smaller) and its first ``seeding_samples`` points, a
   subset of those, the *seeding sample*. All runs of a set share them; the runs differ in
   their seeding draws. (MiniBatchKMeans likewise seeds on a random ``3 x batch_size`` points.)
2. Seeding: k-means++ (Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful
   Seeding"): the first center is a uniformly drawn point of the seeding sample, each further
   center is drawn with probability proportional to D(x)^2, the squared distance of x to the
   nearest center chosen so far. Greedy, as the paper's conclusion suggests and the
   reference's scikit-learn does by default: ``2 + ln K`` candidates are drawn per step and the
   one that lowers the potential sum D(x)^2 most is kept. ``n_init`` restarts per run; the one
   with the lowest potential (inertia on the seeding sample) is kept, as MiniBatchKMeans keeps
   its best initialization. Candidates are sample points, so their distances are rows of the
   seeding sample's distance table (one ``[S, S]`` matmul per set, not one per step).
3. Lloyd iterations on the fit sample: assign every point to its nearest center, move each
   center to the mean of its points (an empty cluster keeps its center), until the squared
   center shift summed over the clusters of a run is at most ``tol`` times the fit sample's
   mean per-feature variance (scikit-learn's KMeans criterion) or ``max_iter`` iterations
   (``KMeansSettings`` says why PRD stops at 4). A converged run is frozen while the others
   go on, so a run's result does not depend on the runs it shares a batch with.
4. Every one of the N points is assigned to its nearest final center (the labels) and the
   inertia over all N points is reported.

Squared distances are ``|x|^2 - 2 x.c + |c|^2`` (one batched matmul, all runs' centers side by
side), computed on points centered per set so that float32 cancellation stays small.

Determinism: the random draws of point set p come from a ``torch.Generator`` on the points'
device seeded with ``seeds[p]`` alone, drawn before any arithmetic; together with the frozen
convergence this makes a set's result the same whether it is clustered alone or in a batch,
and the same on every call for a given seed and device (CPU and CUDA generators differ, so
results are per device).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class KMeansSettings:
    """Defaults: PRD's clustering, matched to the reference protocol's MiniBatchKMeans(n_init=10).

    ``max_iter`` = 4: the reference's mini-batch k-means stops early (no better mini-batch
    inertia in 10 steps, ~25-35 mini-batches of 1,024), short of a converged clustering, and
    PRD depends on how far the clustering went: the more converged, the lower the PRD scalar
    and F8. Four Lloyd iterations from the greedy seeding reach the reference's inertia (the
    k-means objective over all points) and its PRD values within its run-to-run spread;
    converged Lloyd does not. Measured (``benchmarks/prd_agreement.py``, classifier features of
    generated vs real PolyMNIST, 2,000 points): inertia 3,146 +- 28 against the reference's
    3,148 +- 30 (converged: 3,095); PRD means within 0.7 reference standard deviations of the
    reference's (converged: up to 2.5 lower). With 10,000 points and the 4,096-point fit sample
    the inertia matches too (102,362 vs 102,487).
    """

    n_init: int = 10
    """k-means++ restarts per run; the one of lowest seeding inertia is refined."""
    local_trials: int | None = None
    """Candidates per k-means++ step, the one lowering the potential most kept; ``None``:
    2 + ln K (the reference's scikit-learn default); 1 is plain k-means++."""
    seeding_samples: int = 1024
    """Points the k-means++ restarts draw from (MiniBatchKMeans' default batch size)."""
    fit_samples: int = 4096
    """Points the Lloyd iterations move the centers on (all of them when there are fewer)."""
    max_iter: int = 4
    tol: float = 1e-4
    """Convergence: squared center shift <= tol x the mean per-feature variance."""

    def __post_init__(self) -> None:
        if self.n_init < 1 or (self.local_trials or 1) < 1 or self.seeding_samples < 1 or self.fit_samples < 1 or self.max_iter < 0 or self.tol < 0:
            raise ValueError(f"invalid k-means settings: {self}")


@dataclass(frozen=True)
class KMeansResult:
    centers: Tensor
    """``[P, runs, K, F]`` final centers (in the points' coordinates)."""
    labels: Tensor
    """``[P, runs, N]`` index of each point's nearest final center."""
    inertia: Tensor
    """``[P, runs]`` sum over all N points of the squared distance to the nearest center."""
    iterations: Tensor
    """``[P, runs]`` Lloyd iterations each run took (0: the seeding was already a fixed point)."""


def kmeans(
    points: Tensor, num_clusters: int, runs: int, seeds: Sequence[int], settings: KMeansSettings = KMeansSettings()
) -> KMeansResult:
    """Cluster each of the P point sets ``points [P, N, F]`` ``runs`` times into ``num_clusters``.

    ``seeds[p]`` seeds every random draw of set p (module docstring). Works in float32 on the
    points' device; callers batch ``sets_per_call`` sets at a time to bound the intermediates.
    """
    if points.dim() != 3:
        raise ValueError(f"points must be [P, N, F], got shape {tuple(points.shape)}")
    num_sets, num_points, _ = points.shape
    if len(seeds) != num_sets:
        raise ValueError(f"{len(seeds)} seeds for {num_sets} point sets")
    if num_clusters < 1 or runs < 1:
        raise ValueError(f"num_clusters and runs must be positive, got {num_clusters} and {runs}")
    if num_points < num_clusters:
        raise ValueError(f"{num_points} points cannot form {num_clusters} clusters")
    points = points.float()
    offset = points.mean(dim=1, keepdim=True)
    centered = points - offset  # [P, N, F]

    num_fit = min(num_points, settings.fit_samples)
    num_seeding = min(num_fit, max(settings.seeding_samples, num_clusters))
    trials = settings.local_trials or _greedy_trials(num_clusters)
    order, uniforms = _draws(num_points, num_clusters, runs * settings.n_init, trials, seeds, points.device)
    fit = _rows(centered, order[:, :num_fit])  # [P, M, F]

    centers = _kmeans_plus_plus(fit[:, :num_seeding], uniforms, runs, settings.n_init)  # [P, R, K, F]
    centers, iterations = _lloyd(fit, centers, settings)
    labels, distances = _assign(centered, centers)  # [P, R, N] each
    inertia = distances.double().sum(dim=-1)
    return KMeansResult(centers + offset[:, None], labels, inertia, iterations)


CPU_BATCH_ELEMENTS = 1 << 20
"""On a CPU, batches whose intermediates stay in cache: measured on 2 cores (40 PRD pairs of
2,000 points), one batch of all 40 took 3.3 s, batches of 2-4 pairs 0.9-1.0 s."""
ACCELERATOR_BATCH_ELEMENTS = 1 << 27
"""On a GPU, large batches (512 MB of float32 intermediates) keep the device busy."""


def sets_per_call(num_points: int, num_clusters: int, runs: int, settings: KMeansSettings = KMeansSettings(),
                  device: torch.device | str = "cpu") -> int:
    """How many point sets one ``kmeans`` call should take on ``device``: its largest
    intermediate tensors stay under ``CPU_BATCH_ELEMENTS`` / ``ACCELERATOR_BATCH_ELEMENTS``."""
    budget = CPU_BATCH_ELEMENTS if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_ELEMENTS
    num_fit = min(num_points, settings.fit_samples)
    num_seeding = min(num_fit, settings.seeding_samples)
    trials = settings.local_trials or _greedy_trials(num_clusters)
    per_set = max(
        num_points * runs * num_clusters,  # the final assignment's distances
        num_fit * runs * num_clusters,  # a Lloyd step's distances and assignment matrix
        num_seeding * num_seeding,  # the seeding sample's distance table
        num_seeding * runs * settings.n_init * trials,  # the seeding candidates' potentials
    )
    return max(1, budget // per_set)


def map_batches(function: Callable[[T], R], batches: Sequence[T], device: torch.device | str = "cpu") -> list[R]:
    """``[function(b) for b in batches]``; on a CPU the batches run side by side on
    ``torch.get_num_threads()`` threads, each of their operations on one thread.

    A batch's operations are small (``CPU_BATCH_ELEMENTS``), and splitting each of them across
    OpenMP threads makes the threads wait on one another at every operation, which on a shared
    machine costs far more than it gains: 160 PRD pairs of 2,000 points took 26.8 s with 2
    OpenMP threads, 6.3 s with one and 5.9 s as two single-threaded workers (2 cores, load ~2.4).
    Batches are independent, so the results are the same either way."""
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads < 2 or len(batches) < 2:
        return [function(batch) for batch in batches]
    # Threads started after this take the one-thread setting (torch reads it at a thread's first
    # parallel operation); the caller's setting is back when they are done.
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(threads, len(batches))) as pool:
            return list(pool.map(function, batches))
    finally:
        torch.set_num_threads(threads)


def _greedy_trials(num_clusters: int) -> int:
    return 2 + int(math.log(num_clusters))


def _draws(num_points: int, num_clusters: int, restarts: int, trials: int, seeds: Sequence[int], device: torch.device):
    """Each set's permutation of its points and its k-means++ uniforms, from its own seed."""
    orders, uniforms = [], []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
        orders.append(torch.randperm(num_points, generator=generator, device=device))
        uniforms.append(torch.rand(restarts, num_clusters, trials, generator=generator, device=device))
    return torch.stack(orders), torch.stack(uniforms)  # [P, N], [P, C, K, L]


def _rows(points: Tensor, index: Tensor) -> Tensor:
    """``points[p, index[p]]`` for every set p: ``[P, N, F]``, ``[P, M]`` -> ``[P, M, F]``."""
    return points[torch.arange(points.shape[0], device=points.device)[:, None], index]


def _shifted_distances(points: Tensor, centers: Tensor) -> Tensor:
    """``|c|^2 - 2 c.x``: ``[P, M, F]``, ``[P, C, F]`` -> ``[P, C, M]``, the squared distances less
    the points' own ``|x|^2``. That is the same for every center, so it changes no nearest-center
    decision, and leaving it out saves a pass over ``[P, C, M]``."""
    centers_sq = centers.square().sum(dim=-1)  # [P, C]
    return torch.baddbmm(centers_sq[..., None], centers, points.transpose(1, 2), alpha=-2.0)


def _kmeans_plus_plus(sample: Tensor, uniforms: Tensor, runs: int, n_init: int) -> Tensor:
    """Greedy k-means++ seeding of ``C = runs x n_init`` center sets per point set, and the best
    restart of each run: ``[P, S, F]``, uniforms ``[P, C, K, L]`` -> ``[P, runs, K, F]``."""
    num_sets, num_sample, _ = sample.shape
    num_restarts, num_clusters, trials = uniforms.shape[1:]
    sample_sq = sample.square().sum(dim=-1)  # [P, S]

    def draw(u: Tensor, cumulative: Tensor | None) -> Tensor:
        """Sample indices for uniforms ``u [P, C, L]``: with probability D(x)^2 / sum D^2 (the first
        point whose cumulative weight exceeds u x total; a point at distance 0, already a center,
        never), uniformly when there is no weight yet or left (fewer distinct points than clusters)."""
        uniform = (u * num_sample).long().clamp_(max=num_sample - 1)
        if cumulative is None:
            return uniform
        total = cumulative[..., -1:]
        weighted = torch.searchsorted(cumulative, u * total, right=True).clamp_(max=num_sample - 1)
        return torch.where(total > 0, weighted, uniform)

    # Every candidate center is a sample point, so its (shifted) distances to the sample are a row
    # of one [S, S] table per set: one matmul instead of one [C x L, S] matmul per step (19 steps x
    # 400 candidates against 1,024 points per PRD pair; measured 38 instead of 54 ms per pair).
    table = _shifted_distances(sample, sample)  # [P, S, S]
    sets = torch.arange(num_sets, device=sample.device)[:, None]

    def shifted_distances(index: Tensor) -> Tensor:
        """Shifted distances of sample points ``index [P, M]`` to every sample point: ``[P, M, S]``."""
        return table[sets, index]

    chosen = draw(uniforms[:, :, 0, :1], None)[..., 0]  # [P, C]
    centers = [chosen]
    shifted = shifted_distances(chosen)  # [P, C, S]
    for k in range(1, num_clusters):
        nearest = (shifted + sample_sq[:, None, :]).clamp_(min=0.0)  # D(x)^2
        candidates = draw(uniforms[:, :, k], nearest.cumsum(dim=-1))  # [P, C, L]
        distances = shifted_distances(candidates.view(num_sets, -1))
        # Greedy: of the L candidates keep the one that lowers the potential sum D(x)^2 the most
        # (the shifted sums differ from it by the same sum |x|^2).
        potentials = torch.minimum(shifted[:, :, None, :], distances.view(num_sets, num_restarts, trials, num_sample))
        best = potentials.sum(dim=-1).argmin(dim=-1)  # [P, C]
        shifted = potentials.gather(2, best[:, :, None, None].expand(-1, -1, 1, num_sample))[:, :, 0]
        centers.append(candidates.gather(2, best[..., None])[..., 0])
    nearest = (shifted + sample_sq[:, None, :]).clamp_(min=0.0)
    stacked = _rows(sample, torch.stack(centers, dim=2).view(num_sets, -1)).view(num_sets, num_restarts, num_clusters, -1)
    inertia = nearest.sum(dim=-1).view(num_sets, runs, n_init)
    best = inertia.argmin(dim=-1)  # [P, R]
    stacked = stacked.view(num_sets, runs, n_init, num_clusters, -1)
    index = best[:, :, None, None, None].expand(-1, -1, 1, num_clusters, stacked.shape[-1])
    return torch.gather(stacked, 2, index)[:, :, 0]


def _labels(points: Tensor, centers: Tensor) -> Tensor:
    """Nearest center of every point for every run: ``[P, M, F]``, ``[P, R, K, F]`` -> ``[P, R, M]``."""
    num_sets, runs, num_clusters, num_features = centers.shape
    distances = _shifted_distances(points, centers.reshape(num_sets, runs * num_clusters, num_features))
    # min(), not argmin(): argmin over a strided dimension is ~4x slower on CPU (torch 2.14).
    return distances.view(num_sets, runs, num_clusters, -1).min(dim=2).indices


def _lloyd(points: Tensor, centers: Tensor, settings: KMeansSettings) -> tuple[Tensor, Tensor]:
    num_sets, runs, num_clusters, num_features = centers.shape
    num_points = points.shape[1]
    # Mean per-feature variance of each set's fit sample, the scale of the tolerance.
    variance = (points.square().sum(dim=(1, 2)) / num_points - points.mean(dim=1).square().sum(dim=-1)) / num_features
    threshold = settings.tol * variance  # [P]
    active = torch.ones(num_sets, runs, dtype=torch.bool, device=points.device)
    iterations = torch.zeros(num_sets, runs, dtype=torch.long, device=points.device)
    one_hot = torch.empty(num_sets, runs, num_clusters, num_points, dtype=points.dtype, device=points.device)
    for _ in range(settings.max_iter):
        labels = _labels(points, centers)  # [P, R, M]
        # Cluster sums as one batched matmul of the assignment matrix with the points.
        one_hot.zero_().scatter_(2, labels[:, :, None, :], 1.0)
        flat = one_hot.view(num_sets, runs * num_clusters, num_points)
        sums = torch.bmm(flat, points).view(num_sets, runs, num_clusters, num_features)
        counts = flat.sum(dim=-1).view(num_sets, runs, num_clusters, 1)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1.0), centers)
        shift = (moved - centers).square().sum(dim=(2, 3))  # [P, R]
        centers = torch.where(active[..., None, None], moved, centers)
        iterations += active.long()
        active &= shift > threshold[:, None]
        if not bool(active.any()):
            break
    return centers, iterations


def _assign(points: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Labels ``[P, R, N]`` of all points and their squared distances ``[P, R, N]``."""
    num_sets, runs, num_clusters, num_features = centers.shape
    distances = _shifted_distances(points, centers.reshape(num_sets, runs * num_clusters, num_features))
    nearest, labels = distances.view(num_sets, runs, num_clusters, -1).min(dim=2)
    return labels, (nearest + points.square().sum(dim=-1)[:, None, :]).clamp_(min=0.0)
