"""Coherence counting and the Table 6.2 summaries on constructed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmplatform.evaluation.coherence import (
    CoherenceCounts,
    CoherenceScorer,
    coherence_scorer,
    coherence_summaries,
    register_coherence_scorer,
)


def one_hot_logits(classes: list[int], num_classes: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float()


def test_single_label_hits_compare_argmax_with_the_label():
    scorer = coherence_scorer("single")
    hits = scorer.hits(one_hot_logits([0, 1, 2, 3]), torch.tensor([0, 2, 2, 0]))
    assert hits.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_agreement_needs_every_modality_to_agree():
    scorer = coherence_scorer("single")
    agreement = scorer.agreement([one_hot_logits([1, 2, 3]), one_hot_logits([1, 2, 0]), one_hot_logits([1, 0, 3])])
    assert agreement.tolist() == [1.0, 0.0, 0.0]
    assert scorer.agreement([one_hot_logits([3, 1])]).tolist() == [1.0, 1.0]


def test_single_label_scorer_rejects_multi_hot_labels():
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        coherence_scorer("single").hits(one_hot_logits([0, 1]), torch.ones(2, 4))


def test_scorers_are_registered_by_label_kind():
    with pytest.raises(KeyError, match="registered: \\['single'"):
        coherence_scorer("multi")
    with pytest.raises(ValueError, match="already registered"):
        register_coherence_scorer("single", CoherenceScorer(hits=lambda l, y: y, agreement=lambda ls: ls[0]))


def test_counts_divide_only_at_the_end_and_mark_empty_pairs():
    counts = CoherenceCounts.zeros(2, 2)
    counts.add(0, 0, torch.tensor([1.0, 0.0, 1.0]))
    counts.add(0, 0, torch.tensor([1.0]))
    counts.add(1, 1, torch.tensor([0.0, 0.0]))
    accuracy = counts.accuracy()
    assert accuracy[0, 0] == 0.75 and accuracy[1, 1] == 0.0
    assert np.isnan(accuracy[0, 1]) and np.isnan(accuracy[1, 0])


def test_summaries_average_pairs_by_membership():
    mask = np.array([row for size in (1, 2, 3) for row in itertools.combinations(range(3), size)], dtype=object)
    subsets = np.array([[m in row for m in range(3)] for row in mask])
    rng = np.random.default_rng(0)
    accuracy = rng.uniform(size=subsets.shape)
    missing = [accuracy[s, m] for s in range(7) for m in range(3) if not subsets[s, m]]
    reconstruction = [accuracy[s, m] for s in range(7) for m in range(3) if subsets[s, m]]
    summaries = coherence_summaries(accuracy, subsets)
    assert len(missing) == 9 and len(reconstruction) == 12
    assert summaries["missing"] == pytest.approx(sum(missing) / 9)
    assert summaries["reconstruction"] == pytest.approx(sum(reconstruction) / 12)
    assert summaries["all"] == pytest.approx(accuracy.mean())


def test_one_modality_has_no_missing_summary():
    summaries = coherence_summaries(np.array([[0.8]]), np.array([[True]]))
    assert summaries == {"reconstruction": 0.8, "all": 0.8}
