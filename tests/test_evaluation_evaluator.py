"""The evaluation pass on a fake model whose outcomes are known by construction.

Images are ``[1, 4, 4]``: pixel (0, 0) encodes the label as (label + 0.5) / 10 and the other
pixels hold noise fixed by the sample index (the same for every modality of a sample). The
fake classifier reads the label pixel, so a generator that copies its input is coherent with
probability 1 and a generator that always draws label 0 with probability 1/10 (balanced
labels). Posterior means are a scaled one-hot of the label plus noise: linearly separable.

The distributed test runs the pass in 2 gloo processes, each on half of the batches, and
compares with the single-process result.
"""

from __future__ import annotations

import itertools
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator
from mmplatform.evaluation.results import MetricRecord
from mmplatform.evaluation.prd import PRDParameters, prd_from_histograms

NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means with 2 OpenMP threads on 2 shared, loaded cores spins ~40x slower than 1 thread."""
    with threadpool_limits(1):
        yield
MODALITIES = ("m0", "m1", "m2")
LATENT_DIM = 12
IDENTICAL_PRD_SCORE = prd_from_histograms(np.ones(4) / 4, np.ones(4) / 4, 1001).score()


def subset_mask(num_modalities: int) -> torch.Tensor:
    rows = []
    for size in range(1, num_modalities + 1):
        for members in itertools.combinations(range(num_modalities), size):
            rows.append([m in members for m in range(num_modalities)])
    return torch.tensor(rows)


def label_images(labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    noise = torch.stack([torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(int(i))) for i in indices])
    images = 0.5 + 0.4 * noise
    images[:, 0, 0, 0] = (labels.float() + 0.5) / NUM_CLASSES
    return images


class LabelReader(nn.Module):
    """Fake classifier: logits are the one-hot of the label pixel; features are the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # a device to move to, like a real classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = (x[:, 0, 0, 0] * NUM_CLASSES).floor().long().clamp(0, NUM_CLASSES - 1)
        return nn.functional.one_hot(labels, NUM_CLASSES).float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.cat([10.0 * flat[:, :1], flat[:, 1:4]], dim=1)


class FakeVAE(nn.Module):
    """The model API the evaluator uses, with outcomes fixed by ``mode``.

    * ``copy``: every subset decodes the images of its first member (all modalities of a
      sample share noise, so generated equals real); the prior draws one label per sample.
    * ``constant``: every generated image shows label 0.
    * ``reconstruct_only``: copies into the subset's own modalities, label 0 elsewhere.
    * prior ``half``: the last modality disagrees on about half of the prior samples.
    """

    def __init__(self, mode: str = "copy", prior: str = "agree") -> None:
        super().__init__()
        self.mode, self.prior = mode, prior
        self.modality_names = list(MODALITIES)
        self.subsets = subset_mask(len(MODALITIES))
        self.subset_names = ["_".join(n for n, u in zip(MODALITIES, row) if u) for row in self.subsets.tolist()]
        self.unused = nn.Parameter(torch.zeros(1))
        self.training_flag_seen: list[bool] = []

    def _source(self, inputs, subset: int) -> torch.Tensor:
        first = int(torch.nonzero(self.subsets[subset])[0])
        return inputs[MODALITIES[first]]

    def _constant(self, like: torch.Tensor) -> torch.Tensor:
        images = torch.full_like(like, 0.5)
        images[:, 0, 0, 0] = 0.5 / NUM_CLASSES
        return images

    def generate(self, inputs, subsets=None):
        self.training_flag_seen.append(self.training)
        out = {}
        for j, m in enumerate(MODALITIES):
            per_subset = []
            for s in range(len(self.subsets)):
                source = self._source(inputs, s)
                copy = self.mode == "copy" or (self.mode == "reconstruct_only" and bool(self.subsets[s, j]))
                per_subset.append(source.clone() if copy else self._constant(source))
            out[m] = torch.stack(per_subset)
        return out

    def subset_posteriors(self, inputs, subsets=None):
        means = []
        for s in range(len(self.subsets)):
            source = self._source(inputs, s)
            labels = (source[:, 0, 0, 0] * NUM_CLASSES).floor().long()
            noise = source.flatten(1)[:, 1:LATENT_DIM + 1] - 0.7
            means.append(3.0 * nn.functional.one_hot(labels, NUM_CLASSES).float().repeat(1, 2)[:, :LATENT_DIM] + noise)
        return SimpleNamespace(mean=torch.stack(means))

    def sample_prior(self, n: int):
        labels = torch.randint(0, NUM_CLASSES, (n,))
        images = label_images(labels, torch.randint(0, 10**6, (n,)))
        out = {m: images.clone() for m in MODALITIES}
        if self.prior == "half":
            disagree = torch.rand(n) < 0.5
            shifted = label_images((labels + 1) % NUM_CLASSES, torch.zeros(n, dtype=torch.long))
            out[MODALITIES[-1]] = torch.where(disagree[:, None, None, None], shifted, images)
        return out

    def log_likelihood(self, inputs, num_samples: int) -> torch.Tensor:
        return -inputs["m0"].flatten(1).sum(1) * num_samples


def make_batches(start: int, stop: int, batch_size: int, prefix: str = "", label_offset: int = 0):
    batches = []
    for first in range(start, stop, batch_size):
        indices = torch.arange(first, min(first + batch_size, stop))
        labels = (indices + label_offset) % NUM_CLASSES
        images = label_images(labels, indices + (10**5 if prefix else 0))
        inputs = {m: images.clone() for m in MODALITIES}
        batches.append((inputs, labels, [f"{prefix}{int(i):08d}" for i in indices]))
    return batches


NUM_TEST = 40


def small_options(**overrides) -> EvaluationOptions:
    values = dict(
        probe_train_samples=30,
        random_coherence_samples=50,
        prior_batch_size=16,
        log_likelihood_samples=3,
        prd=PRDParameters(num_clusters=4, num_runs=2, kmeans_n_init=2),
        prd_samples=24,
    )
    values.update(overrides)
    return EvaluationOptions(**values)


def classifiers() -> dict[str, nn.Module]:
    return {m: LabelReader() for m in MODALITIES}


def evaluator(options: EvaluationOptions) -> Evaluator:
    # Plain callables as PRD features keep torch-fidelity out of this module (and its
    # spawned processes); the torch-fidelity extractor is tested in test_evaluation_feature_extractors.
    readers = classifiers()
    return Evaluator(options, readers, image_features={m: readers[m].features for m in MODALITIES})


def run_single(mode: str = "copy", prior: str = "agree", **overrides):
    model = FakeVAE(mode, prior)
    return evaluator(small_options(**overrides)).evaluate(
        model, make_batches(0, NUM_TEST, 8), make_batches(0, 60, 16, prefix="train-", label_offset=3)
    )


def test_copy_generator_is_fully_coherent_and_probe_separates():
    scalars = run_single("copy").scalars()
    pair_values = [v for k, v in scalars.items() if k.startswith("coherence_") and "/" in k]
    assert len(pair_values) == 7 * 3
    assert pair_values == [1.0] * 21
    assert scalars["coherence"] == scalars["coherence_missing"] == scalars["coherence_reconstruction"] == 1.0
    assert scalars["coherence_random"] == 1.0
    assert scalars["latent_accuracy"] == 1.0
    assert scalars["evaluated_samples"] == NUM_TEST


def test_constant_generator_scores_the_label_frequency():
    scalars = run_single("constant").scalars()
    assert scalars["coherence_missing"] == pytest.approx(0.1)
    assert scalars["coherence_reconstruction"] == pytest.approx(0.1)
    assert scalars["coherence_missing/m0/m1"] == pytest.approx(0.1)


def test_missing_and_reconstruction_are_split_by_subset_membership():
    scalars = run_single("reconstruct_only").scalars()
    assert scalars["coherence_reconstruction"] == 1.0
    assert scalars["coherence_missing"] == pytest.approx(0.1)
    # 12 reconstruction pairs at 1 and 9 missing pairs at 0.1 (3 modalities, 7 subsets).
    assert scalars["coherence"] == pytest.approx((12 * 1.0 + 9 * 0.1) / 21)
    assert scalars["coherence_reconstruction/m0_m2/m2"] == 1.0
    assert scalars["coherence_missing/m0_m2/m1"] == pytest.approx(0.1)


def test_random_coherence_counts_agreeing_prior_tuples():
    value = run_single("copy", prior="half", random_coherence_samples=400, metrics=("coherence",)).scalars()[
        "coherence_random"
    ]
    assert 0.4 < value < 0.6  # ~Binomial(400, 0.5) / 400


def test_prd_of_a_copying_generator_is_that_of_identical_sets():
    scalars = run_single("copy").scalars()
    assert scalars["prd_reconstruction/m1/m1"] == pytest.approx(IDENTICAL_PRD_SCORE, abs=1e-9)
    assert scalars["prd_missing"] == pytest.approx(IDENTICAL_PRD_SCORE, abs=1e-9)
    assert scalars["prd_f8_missing"] == pytest.approx(1.0, abs=1e-6)
    assert scalars["prd_f1_8_reconstruction"] == pytest.approx(1.0, abs=1e-6)
    assert {"prd_random/m0", "prd_random"} <= set(scalars)


def test_prd_of_a_constant_generator_has_no_recall():
    scalars = run_single("constant").scalars()
    # One generated point in one cluster of four: recall at most ~1/4 of the real mass.
    assert scalars["prd_f8_missing"] < 0.5
    assert scalars["prd_missing"] < IDENTICAL_PRD_SCORE - 0.2


def test_log_likelihood_is_the_mean_over_test_samples():
    batches = make_batches(0, NUM_TEST, 8)
    expected = torch.cat([-inputs["m0"].flatten(1).sum(1) * 3 for inputs, _, _ in batches]).double().mean()
    scalars = run_single("copy", metrics=("log_likelihood",)).scalars()
    assert scalars["log_likelihood"] == pytest.approx(float(expected), rel=1e-12)
    assert set(scalars) == {"log_likelihood", "evaluated_samples"}


def test_records_carry_contexts_for_the_tracker():
    records = run_single("copy", metrics=("coherence", "latent_probe")).records
    by_flat = {r.flat_name: r for r in records}
    pair = by_flat["coherence_missing/m0/m1"]
    assert pair.name == "coherence"
    assert dict(pair.context) == {"split": "test", "kind": "missing", "subset": "m0", "modality": "m1"}
    assert dict(by_flat["coherence_random"].context) == {"split": "test", "kind": "random"}
    assert dict(by_flat["latent_accuracy/m1_m2"].context) == {"split": "test", "subset": "m1_m2"}
    assert len(by_flat) == len(records)  # flat names are unique
    assert MetricRecord("x", 1.0, {"kind": "all", "split": "test"}).flat_name == "x"


def test_evaluation_leaves_rng_and_training_mode_alone():
    model = FakeVAE("copy").train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    evaluator(small_options(metrics=("coherence",))).evaluate(model, make_batches(0, 16, 8))
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training and model.training_flag_seen == [False, False]


def test_latent_probe_needs_training_batches_and_ddp_wrapper_is_refused():
    with pytest.raises(ValueError, match="probe_train_batches"):
        evaluator(small_options(metrics=("latent_probe",))).evaluate(FakeVAE(), make_batches(0, 8, 8))
    with pytest.raises(ValueError, match="unknown metrics"):
        small_options(metrics=("coherence", "fid"))


# -- distributed: 2 gloo processes, each with half of the test and training batches ---------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(rank: int, world_size: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        threadpool_limits(1)  # as the autouse fixture does in the parent process
        half_test, half_train = NUM_TEST // 2, 30
        # Uneven batch sizes per rank: the result must not depend on batch composition.
        test = make_batches(rank * half_test, (rank + 1) * half_test, 8 if rank == 0 else 6)
        train = make_batches(rank * half_train, (rank + 1) * half_train, 16, prefix="train-", label_offset=3)
        result = evaluator(small_options()).evaluate(FakeVAE("copy", prior="half"), test, train)
        queue.put((rank, result.scalars()))
    finally:
        dist.destroy_process_group()


def test_two_ranks_reduce_to_the_single_process_result():
    expected = run_single("copy", prior="half")
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    processes = [context.Process(target=_distributed_worker, args=(r, 2, port, queue)) for r in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    results = dict(queue.get() for _ in range(2))
    assert results[0] == results[1]
    got, want = results[0], expected.scalars()
    assert set(got) == set(want)
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-12, abs_tol=1e-12), (name, got[name], value)


def test_options_follow_the_platform_config():
    from mmplatform.config import EvaluationConfig

    config = EvaluationConfig(metrics=["coherence", "prd"], prd_clusters=7, prd_runs=3, sample_limit=500,
                              feature_extractor_weights="/weights/inception.pth")
    options = EvaluationOptions.from_config(config, seed=5)
    assert options.metrics == ("coherence", "prd") and options.sample_limit == 500
    assert (options.prd.num_clusters, options.prd.num_runs, options.prd.seed) == (7, 3, 5)
    assert options.prd_feature_extractor == "inception-v3-compat"
    assert options.feature_extractor_weights_path == "/weights/inception.pth"
    from mmplatform.config import build_config

    assert EvaluationOptions.from_config(build_config({}).evaluation).prd_feature_extractor == "classifier"


class NonFiniteVAE(FakeVAE):
    """Copies like ``copy`` but generates NaN images for the last modality."""

    def generate(self, inputs, subsets=None):
        out = super().generate(inputs, subsets)
        out[MODALITIES[-1]] = torch.full_like(out[MODALITIES[-1]], float("nan"))
        return out


def test_prd_skips_pairs_it_cannot_score_and_scores_the_others(caplog):
    options = small_options(metrics=("prd",))
    with caplog.at_level("WARNING", logger="mmplatform.evaluation.accumulators"):
        scalars = evaluator(options).evaluate(NonFiniteVAE("copy"), make_batches(0, NUM_TEST, 8)).scalars()
    assert "non-finite" in caplog.text
    assert not any(name.endswith(f"/{MODALITIES[-1]}") and "random" not in name for name in scalars)
    assert scalars["prd_reconstruction/m0/m0"] == pytest.approx(IDENTICAL_PRD_SCORE, abs=1e-9)
    # Too few samples for the clusters: every pair skipped, no PRD value at all.
    tiny = small_options(metrics=("prd",), prd_samples=1)
    with caplog.at_level("WARNING", logger="mmplatform.evaluation.accumulators"):
        scalars = evaluator(tiny).evaluate(FakeVAE("copy"), make_batches(0, NUM_TEST, 8)).scalars()
    assert "cannot fill" in caplog.text and not any(name.startswith("prd") for name in scalars)
