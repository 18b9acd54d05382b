"""Batched k-means (``mmplatform.evaluation.kmeans``) against properties checked in numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmplatform.evaluation.kmeans import KMeansSettings, kmeans, map_batches, sets_per_call


def blobs(num_blobs: int, counts: list[int], seed: int, dim: int = 5, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Points around ``num_blobs`` centers 10 apart, and each point's blob."""
    rng = np.random.default_rng(seed)
    centers = 10.0 * rng.standard_normal((num_blobs, dim))
    truth = np.repeat(np.arange(num_blobs), counts)
    points = centers[truth] + spread * rng.standard_normal((len(truth), dim))
    order = rng.permutation(len(truth))
    return points[order].astype(np.float32), truth[order]


def inertia_of(points: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    return float(((points.astype(np.float64) - centers.astype(np.float64)[labels]) ** 2).sum())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings group the points alike (equal up to renaming the clusters)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_recovers_well_separated_clusters_in_every_run():
    points, truth = blobs(6, [40, 10, 25, 60, 5, 30], seed=0)
    result = kmeans(torch.from_numpy(points)[None], 6, runs=4, seeds=[3])
    for run in range(4):
        labels = result.labels[0, run].numpy()
        assert same_partition(labels, truth)
        for cluster in range(6):
            members = points[labels == cluster]
            np.testing.assert_allclose(result.centers[0, run, cluster].numpy(), members.mean(axis=0), atol=1e-4)
    # The k-means++ seeding alone already puts one center in each blob: a second center in a
    # blob is drawn with probability ~(0.05 / 10)^2 per step.
    seeded = kmeans(torch.from_numpy(points)[None], 6, runs=4, seeds=[3], settings=KMeansSettings(max_iter=0))
    assert all(same_partition(seeded.labels[0, run].numpy(), truth) for run in range(4))


def test_labels_are_the_nearest_centers_and_inertia_is_theirs():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((3, 300, 8)).astype(np.float32) + 100.0  # an offset: centering matters
    result = kmeans(torch.from_numpy(points), 7, runs=2, seeds=[0, 1, 2])
    for p, run in itertools.product(range(3), range(2)):
        centers = result.centers[p, run].numpy().astype(np.float64)
        distances = ((points[p, :, None, :].astype(np.float64) - centers[None]) ** 2).sum(axis=-1)
        labels = result.labels[p, run].numpy()
        # Nearest up to float32 rounding of the distance expansion.
        assert np.all(distances[np.arange(300), labels] <= distances.min(axis=1) + 1e-3)
        assert result.inertia[p, run].item() == pytest.approx(inertia_of(points[p], labels, centers), rel=1e-4)


def test_inertia_is_never_worse_than_a_random_assignment():
    rng = np.random.default_rng(2)
    points = rng.standard_normal((4, 400, 6)).astype(np.float32)
    points[1] *= np.linspace(0.1, 5.0, 6, dtype=np.float32)  # anisotropic
    points[2, :200] += 3.0  # two overlapping groups
    result = kmeans(torch.from_numpy(points), 10, runs=3, seeds=[5, 6, 7, 8])
    for p in range(4):
        for trial in range(20):
            # A random partition with its best centers (the means of its parts).
            labels = rng.integers(0, 10, 400)
            centers = np.stack([points[p][labels == k].mean(axis=0) for k in range(10)])
            random_inertia = inertia_of(points[p], labels, centers)
            assert result.inertia[p].max().item() < random_inertia


def test_converged_lloyd_is_a_fixed_point():
    points, _ = blobs(4, [50, 50, 50, 50], seed=4, spread=3.0)  # overlapping: Lloyd needs iterations
    result = kmeans(torch.from_numpy(points)[None], 4, runs=3, seeds=[0], settings=KMeansSettings(max_iter=100, tol=0.0))
    assert int(result.iterations.max()) < 100
    for run in range(3):
        labels = result.labels[0, run].numpy()
        for cluster in np.unique(labels):
            np.testing.assert_allclose(result.centers[0, run, cluster].numpy(), points[labels == cluster].mean(axis=0),
                                       atol=1e-4)


def test_seeded_results_are_deterministic_and_seeds_differ():
    rng = np.random.default_rng(3)
    points = torch.from_numpy(rng.standard_normal((2, 500, 4)).astype(np.float32))
    first, again = kmeans(points, 8, 3, [10, 11]), kmeans(points, 8, 3, [10, 11])
    assert torch.equal(first.labels, again.labels) and torch.equal(first.centers, again.centers)
    other = kmeans(points, 8, 3, [12, 13])
    assert not torch.equal(first.centers, other.centers)
    # The runs of one set are different clusterings too (their own seeding draws).
    assert not torch.equal(first.centers[0, 0], first.centers[0, 1])


def test_a_batch_gives_each_set_its_result_alone():
    rng = np.random.default_rng(4)
    sets = rng.standard_normal((5, 600, 6)).astype(np.float32)
    sets[3] = blobs(3, [200, 200, 200], seed=9, dim=6, spread=1.0)[0]  # one converges quickly
    settings = KMeansSettings(fit_samples=400, seeding_samples=128)  # the subsampled path too
    seeds = [0, 1, 2, 3, 0]
    batched = kmeans(torch.from_numpy(sets), 9, runs=2, seeds=seeds, settings=settings)
    for p in range(5):
        alone = kmeans(torch.from_numpy(sets[p: p + 1]), 9, runs=2, seeds=[seeds[p]], settings=settings)
        assert torch.equal(alone.labels[0], batched.labels[p])
        assert torch.equal(alone.iterations[0], batched.iterations[p])
        torch.testing.assert_close(alone.centers[0], batched.centers[p])


def test_fewer_distinct_points_than_clusters():
    points = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)[None]
    result = kmeans(points, 5, runs=2, seeds=[0])
    assert torch.isfinite(result.centers).all() and torch.isfinite(result.inertia).all()
    assert result.inertia.max().item() == pytest.approx(0.0, abs=1e-6)
    labels = result.labels[0].numpy()
    assert all(same_partition(labels[run], np.repeat([0, 1], 10)) for run in range(2))


def test_arguments_are_checked_and_batches_sized():
    with pytest.raises(ValueError, match="cannot form"):
        kmeans(torch.zeros(1, 3, 2), 4, 1, [0])
    with pytest.raises(ValueError, match="seeds"):
        kmeans(torch.zeros(2, 10, 2), 2, 1, [0])
    with pytest.raises(ValueError):
        KMeansSettings(n_init=0)
    assert sets_per_call(2000, 20, 10, device="cpu") >= 1
    assert sets_per_call(2000, 20, 10, device="cuda") > sets_per_call(2000, 20, 10, device="cpu")


def test_cpu_batches_run_side_by_side_with_the_results_of_one_by_one():
    rng = np.random.default_rng(5)
    batches = [torch.from_numpy(rng.standard_normal((2, 300, 4)).astype(np.float32)) for _ in range(3)]

    def cluster(points):
        return kmeans(points, 5, runs=2, seeds=[0, 1]).labels

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        side_by_side = map_batches(cluster, batches, "cpu")
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, cluster(b)) for a, b in zip(side_by_side, batches))
