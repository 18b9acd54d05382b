"""The seeded key sample: the same rows whatever the split across ranks and batches."""

from __future__ import annotations

import numpy as np
import torch

from mmplatform.evaluation.key_sample import PrioritySample, key_priorities, merge_states

KEYS = [f"{i:08d}" for i in range(200)]


def sample_of(key_batches: list[list[str]], capacity: int, seed: int) -> PrioritySample:
    sample = PrioritySample(capacity)
    for keys in key_batches:
        values = torch.tensor([int(k) for k in keys], dtype=torch.float32)
        sample.add(key_priorities(keys, seed), {"value": values, "pair": torch.stack([values, -values], 1)})
    return sample


def test_priorities_are_fixed_by_seed_and_key():
    assert np.array_equal(key_priorities(KEYS[:5], 0), key_priorities(KEYS[:5], 0))
    assert not np.array_equal(key_priorities(KEYS[:5], 0), key_priorities(KEYS[:5], 1))
    assert key_priorities(KEYS, 0).min() >= 0


def test_sample_is_the_smallest_priorities_independent_of_the_split():
    capacity, seed = 25, 3
    expected = np.sort(np.argsort(key_priorities(KEYS, seed))[:capacity])
    whole = sample_of([KEYS[i:i + 7] for i in range(0, 200, 7)], capacity, seed).state()
    # Two "ranks" with different batch sizes, merged like the evaluator merges gathered states.
    rank_states = [
        sample_of([KEYS[i:i + 5] for i in range(0, 120, 5)], capacity, seed).state(),
        sample_of([KEYS[i:i + 11] for i in range(120, 200, 11)], capacity, seed).state(),
    ]
    merged = merge_states(rank_states, capacity)
    assert np.array_equal(np.sort(whole.rows["value"].numpy().astype(int)), expected)
    assert np.array_equal(merged.priorities, whole.priorities)
    assert torch.equal(merged.rows["pair"], whole.rows["pair"])
    assert torch.equal(merged.rows["pair"][:, 0], -merged.rows["pair"][:, 1])  # rows stay aligned


def test_memory_stays_bounded_and_empty_states_merge():
    sample = sample_of([KEYS[i:i + 10] for i in range(0, 200, 10)], 8, 0)
    assert sample._buffered <= 2 * 8 + 10
    assert len(merge_states([PrioritySample(4).state()], 4)) == 0
