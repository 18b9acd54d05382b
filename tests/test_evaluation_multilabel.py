"""Multi-label evaluation (CelebA's attributes) on a fake model whose outcomes are known.

Tuples carry A binary attributes. An "image" of a tuple is a vector ``[A]``: attribute a's entry
is ``label + noise`` (noise fixed by the sample index), so a classifier that reads the entries
as logits ranks positives above negatives imperfectly. The fake model's generations copy the
subset's first member; its posterior means are the same vectors. The expected average precision
is computed independently with scikit-learn on the whole test set.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator

MODALITIES = ("image", "text")
ATTRIBUTES = ("Smiling", "Young", "Bald", "Never")  # "Never": no positive in the data
NUM_SAMPLES = 96


def dataset(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((NUM_SAMPLES, len(ATTRIBUTES))) < [0.5, 0.3, 0.1, 0.0]).astype(np.uint8)
    noise = {m: rng.normal(0, 0.8, labels.shape) for m in MODALITIES}
    inputs = {m: torch.tensor(labels + noise[m], dtype=torch.float32) for m in MODALITIES}
    return inputs, torch.tensor(labels), [f"{i:05d}" for i in range(NUM_SAMPLES)]


class Logits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class CopyVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.modality_names = list(MODALITIES)
        rows = [[m in members for m in range(2)] for size in (1, 2) for members in itertools.combinations(range(2), size)]
        self.subsets = torch.tensor(rows)
        self.subset_names = ["_".join(n for n, u in zip(MODALITIES, row) if u) for row in rows]
        self.unused = nn.Parameter(torch.zeros(1))

    def _first(self, inputs, s):
        return inputs[MODALITIES[int(torch.nonzero(self.subsets[s])[0])]]

    def generate(self, inputs, subsets=None):
        return {m: torch.stack([self._first(inputs, s) for s in range(len(self.subsets))]) for m in MODALITIES}

    def subset_posteriors(self, inputs, subsets=None):
        means = torch.stack([self._first(inputs, s) for s in range(len(self.subsets))])
        return type("Posterior", (), {"mean": means})()


def batches(inputs, labels, keys, size):
    for start in range(0, NUM_SAMPLES, size):
        yield ({m: x[start:start + size] for m, x in inputs.items()}, labels[start:start + size], keys[start:start + size])


def evaluate(batch_size: int, metrics=("coherence_ap", "latent_probe_ap")):
    inputs, labels, keys = dataset()
    options = EvaluationOptions(metrics=tuple(metrics), label_kind="multi",
                                label_names=ATTRIBUTES, probe_train_samples=NUM_SAMPLES)
    evaluator = Evaluator(options, {m: Logits() for m in MODALITIES})
    train = list(batches(*dataset(seed=1), batch_size))
    return evaluator.evaluate(CopyVAE(), batches(inputs, labels, keys, batch_size), train).scalars(), (inputs, labels)


def _expected_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the attributes with a positive, scikit-learn's AP on the whole set."""
    values = [average_precision_score(labels[:, a], scores[:, a]) for a in range(labels.shape[1]) if labels[:, a].any()]
    return float(np.mean(values))


def test_coherence_average_precision_matches_scikit_learn_on_the_whole_test_set():
    scalars, (inputs, labels) = evaluate(batch_size=32)
    labels = labels.numpy()
    # Generations copy the subset's first member: subset "image" and "image_text" generate image scores.
    from_image = _expected_ap(inputs["image"].numpy(), labels)
    from_text = _expected_ap(inputs["text"].numpy(), labels)
    assert scalars["coherence_ap_missing/image/text"] == pytest.approx(from_image, abs=1e-9)  # subset image -> text: missing
    assert scalars["coherence_ap_missing/text/image"] == pytest.approx(from_text, abs=1e-9)
    assert scalars["coherence_ap_missing"] == pytest.approx((from_image + from_text) / 2, abs=1e-9)
    # Per attribute, over the missing pairs; an attribute without positives has none (not 0).
    smiling = np.mean([average_precision_score(labels[:, 0], inputs[m].numpy()[:, 0]) for m in MODALITIES])
    assert scalars["coherence_ap_missing/Smiling"] == pytest.approx(smiling, abs=1e-9)
    assert not any(key.endswith("/Never") for key in scalars)
    assert "coherence_ap_random" not in scalars  # no agreement of prior samples for attributes


def test_latent_probe_average_precision_matches_independent_logistic_regressions():
    scalars, (inputs, labels) = evaluate(batch_size=32)
    train_inputs, train_labels, _ = dataset(seed=1)
    labels, train_labels = labels.numpy(), train_labels.numpy()
    values = []
    for a in range(len(ATTRIBUTES)):
        if not labels[:, a].any():
            continue
        if len(np.unique(train_labels[:, a])) == 1:
            scores = np.full(NUM_SAMPLES, float(train_labels[0, a]))
        else:
            probe = LogisticRegression(max_iter=1000, random_state=0).fit(train_inputs["image"].numpy(), train_labels[:, a])
            scores = probe.predict_proba(inputs["image"].numpy())[:, 1]
        values.append(average_precision_score(labels[:, a], scores))
    assert scalars["latent_ap/image"] == pytest.approx(float(np.mean(values)), abs=1e-6)
    assert 0.0 <= scalars["latent_ap"] <= 1.0


def test_auroc_matches_scikit_learn_and_shares_the_probes_with_average_precision():
    """MMVM's CUB protocol scores the colour groups by AUROC too. An attribute every tuple has or
    none has has no AUROC ("Never"); the probes fitted once serve both scores unchanged."""
    both, (inputs, labels) = evaluate(32, ("coherence_ap", "coherence_auroc", "latent_probe_ap", "latent_probe_auroc"))
    labels = labels.numpy()

    def expected_auroc(scores):
        return float(np.mean([roc_auc_score(labels[:, a], scores[:, a]) for a in range(len(ATTRIBUTES))
                              if 0 < labels[:, a].sum() < len(labels)]))

    from_image, from_text = expected_auroc(inputs["image"].numpy()), expected_auroc(inputs["text"].numpy())
    assert both["coherence_auroc_missing/image/text"] == pytest.approx(from_image, abs=1e-9)
    assert both["coherence_auroc_missing"] == pytest.approx((from_image + from_text) / 2, abs=1e-9)
    assert not any(key.endswith("/Never") for key in both)
    assert 0.5 < both["latent_auroc"] <= 1.0  # the probes rank the noisy labels better than chance
    alone, _ = evaluate(32, ("coherence_ap", "latent_probe_ap"))
    for key, value in alone.items():
        assert both[key] == pytest.approx(value, abs=1e-12), key
    auroc_alone, _ = evaluate(32, ("latent_probe_auroc",))
    assert auroc_alone["latent_auroc"] == pytest.approx(both["latent_auroc"], abs=1e-12)


def test_result_does_not_depend_on_how_the_test_set_is_batched():
    small, _ = evaluate(batch_size=7)
    large, _ = evaluate(batch_size=96)
    assert small.keys() == large.keys()
    for key in small:
        assert small[key] == pytest.approx(large[key], abs=1e-9), key


def test_single_label_metrics_refuse_multi_label_options():
    with pytest.raises(ValueError, match="'coherence' cannot score multi-label data"):
        EvaluationOptions(metrics=("coherence",), label_kind="multi", label_names=ATTRIBUTES)


def test_a_model_with_non_finite_means_loses_its_probe_results_not_the_evaluation():
    """A diverging trial's posterior means overflow: the probe is skipped (no result, not 0) and
    the rest of the evaluation is still reported."""
    class Overflowing(CopyVAE):
        def subset_posteriors(self, inputs, subsets=None):
            posterior = super().subset_posteriors(inputs, subsets)
            posterior.mean[0, 0, 0] = float("nan")
            return posterior

    inputs, labels, keys = dataset()
    options = EvaluationOptions(metrics=("coherence_ap", "latent_probe_ap"), label_kind="multi",
                                label_names=ATTRIBUTES, probe_train_samples=NUM_SAMPLES)
    evaluator = Evaluator(options, {m: Logits() for m in MODALITIES})
    scalars = evaluator.evaluate(Overflowing(), batches(inputs, labels, keys, 32),
                                 list(batches(*dataset(seed=1), 32))).scalars()
    assert not any(key.startswith("latent_ap") for key in scalars)
    assert "coherence_ap_missing" in scalars
