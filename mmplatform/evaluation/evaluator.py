"""The exact, rank-sharded evaluation pass run during training.

Every rank runs the unwrapped model (no DDP collectives in its forward) under ``no_grad`` on
its own disjoint part of the test set, accumulating sums and bounded samples; the ranks then
meet in at most three collectives, all outside the batch loops:

1. ``latent_probe`` only, before the test loop: all-gather the encoded training rows, so every
   rank fits the same probes and scores its own test samples with them;
2. all-gather of the bounded PRD feature samples (every rank then computes its share of the
   PRD pairs);
3. one all-reduce of every count and sum (coherence hits, probe hits, likelihood sums, PRD
   values), divided into fractions only afterwards.

Without ``torch.distributed`` (or with world size 1) the collectives are no-ops and the same
code gives the single-process result. The samples kept for the probe and PRD are chosen by a
seeded hash of the sample keys (``key_sample``), and the prior samples by their global index
from per-chunk seeds, so the result does not depend on the number of ranks either.

Metrics are registered in ``mmplatform.evaluation.metrics`` and computed by the accumulators
registered against them (``accumulators.ACCUMULATORS``); a requested metric without one is an
error when the options are built, never skipped. The model API used: ``generate``, ``sample_prior``,
``subset_posteriors(...).mean``, ``log_likelihood``, ``modality_names``, ``subsets``,
``subset_names``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmplatform.evaluation.accumulators import (
    Accumulator,
    accumulator_for,
    EvalBatch,
    PassContext,
    PriorChunk,
    to_device,
    unpack_batch,
)
from mmplatform.evaluation.collectives import RankInfo, all_gather_objects, all_reduce_sum
from mmplatform.evaluation.metrics import METRICS, PRD, unknown_metrics
from mmplatform.evaluation.latent_probe import ProbeSettings
from mmplatform.evaluation.prd import PRDParameters
from mmplatform.evaluation.results import EvaluationResult, MetricRecord

SINGLE_LABEL_METRICS = tuple(name for name, metric in METRICS.items() if metric.scores("single"))
"""The default of ``EvaluationOptions`` (which tests and benchmarks build directly)."""


@dataclass(frozen=True)
class EvaluationOptions:
    """What one evaluation pass computes; ``from_config`` reads ``EvaluationConfig``."""

    metrics: tuple[str, ...] = SINGLE_LABEL_METRICS
    split: str = "test"
    label_kind: str = "single"
    label_names: tuple[str, ...] = ()
    """Names of the attributes of multi-label data (the per-attribute contexts in Aim)."""
    probe_train_samples: int = 1000
    probe_max_iter: int = 1000
    probe_model: str = "logistic_regression"
    """``latent_probe.PROBE_MODELS`` key: logistic regression (MoPoE) or random forest (MMVM)."""
    probe_forest_trees: int = 5000
    probe_forest_depth: int = 30
    random_coherence_samples: int = 1000
    prior_batch_size: int = 250
    log_likelihood_samples: int = 12
    """Importance samples K per test sample (MoPoE: 12)."""
    prd: PRDParameters = field(default_factory=PRDParameters)
    prd_samples: int = 10000
    """Real and generated samples per PRD pair (MoPoE: 10000), a seeded sample of the test set."""
    prd_feature_extractor: str = "classifier"
    feature_extractor_weights_path: str | None = None
    prd_modalities: tuple[str, ...] | None = None
    """Image modalities that get PRD; ``None``: every modality with features."""
    sample_limit: int | None = None
    """Informational: the eval reader draws the sample (its ``max_samples``); the pass works on
    whatever the batches hold and reports their number as ``evaluated_samples``."""
    seed: int = 0
    unconditional_generation: bool = True
    """Whether the model samples its prior (``sample_prior``); without it (MMVM) random coherence
    and prior PRD are not computed: no prior pass, no value, never a 0."""

    def __post_init__(self) -> None:
        unknown = unknown_metrics(self.metrics)
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; registered: {sorted(METRICS)}")
        for name in self.metrics:
            accumulator_for(name)
            if not METRICS[name].scores(self.label_kind):
                raise ValueError(f"metric {name!r} cannot score {self.label_kind}-label data")
        for name in ("probe_train_samples", "prior_batch_size", "log_likelihood_samples", "prd_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.random_coherence_samples < 0:
            raise ValueError("random_coherence_samples must be >= 0")
        self.probe_settings  # validates the probe model's name

    @property
    def probe_settings(self) -> ProbeSettings:
        return ProbeSettings(model=self.probe_model, max_iter=self.probe_max_iter, forest_trees=self.probe_forest_trees,
                             forest_depth=self.probe_forest_depth, seed=self.seed)

    @classmethod
    def from_config(cls, config: Any, *, seed: int = 0, label_kind: str = "single", label_names=(), **overrides) -> "EvaluationOptions":
        """From ``mmplatform.config.EvaluationConfig`` (or anything with its field names)."""
        weights = getattr(config, "feature_extractor_weights", None)
        values = dict(
            metrics=tuple(config.metrics),
            probe_train_samples=config.probe_train_samples,
            probe_model=config.probe_model,
            probe_forest_trees=config.probe_forest_trees,
            probe_forest_depth=config.probe_forest_depth,
            random_coherence_samples=config.random_coherence_samples,
            log_likelihood_samples=config.log_likelihood_samples,
            prd=PRDParameters(
                num_clusters=config.prd_clusters, num_angles=config.prd_angles, num_runs=config.prd_runs, seed=seed,
                clustering=config.prd_clustering,
            ),
            prd_feature_extractor="inception-v3-compat" if weights is not None else "classifier",
            feature_extractor_weights_path=str(weights) if weights is not None else None,
            sample_limit=getattr(config, "sample_limit", None),
            # A sampled evaluation (sweeps) must not still decode 10,000 prior samples for PRD.
            prd_samples=min(config.prd_samples, config.sample_limit or config.prd_samples),
            seed=seed,
            label_kind=label_kind,
            label_names=tuple(label_names),
        )
        values.update(overrides)
        return cls(**values)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _derived_seed(seed: int, stream: str, index: int) -> int:
    """Independent torch seeds per purpose and index (prior chunk, rank) from the one pass seed."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Evaluator:
    """Runs ``evaluate`` once per evaluation epoch; holds classifiers and PRD features.

    ``classifiers``: modality -> trained classifier (logits; ``features(x)`` for PRD). PRD
    features are built from ``options.prd_feature_extractor`` unless ``image_features`` are
    given (modality -> callable ``[B, ...] -> [B, F]``).
    """

    def __init__(
        self,
        options: EvaluationOptions,
        classifiers: Mapping[str, nn.Module] | None = None,
        image_features: Mapping[str, Any] | None = None,
    ) -> None:
        self.options = options
        self.classifiers = dict(classifiers or {})
        for classifier in self.classifiers.values():
            classifier.eval()
        self.classifier_feature_modalities: frozenset[str] = frozenset()
        if image_features is None and PRD.name in options.metrics:
            from mmplatform.evaluation.feature_extractors import build_modality_features, feature_kind

            modalities = options.prd_modalities or tuple(self.classifiers)
            image_features = build_modality_features(
                options.prd_feature_extractor, self.classifiers, modalities, options.feature_extractor_weights_path
            )
            if feature_kind(options.prd_feature_extractor).classifier_features:
                # Features of the classifiers themselves: generated images are classified (coherence)
                # and featurized (PRD) in one pass where the classifier's head makes its logits.
                self.classifier_feature_modalities = frozenset(
                    m for m in modalities if callable(getattr(self.classifiers[m], "head", None))
                )
        self.image_features = dict(image_features or {})

    def evaluate(
        self, model: nn.Module, eval_batches: Iterable, probe_train_batches: Iterable | None = None
    ) -> EvaluationResult:
        """One pass over this rank's ``eval_batches``; every rank must call it (collectives)."""
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("evaluate the unwrapped module (model.module), not the DDP wrapper")
        device = _model_device(model)
        for module in list(self.classifiers.values()):
            module.to(device)
        for features in self.image_features.values():
            if hasattr(features, "to"):
                features.to(device)
        rank = RankInfo.current()
        ctx = PassContext(
            model=model, device=device, options=self.options, classifiers=self.classifiers,
            image_features=self.image_features, rank=rank, modality_names=list(model.modality_names),
            subset_names=list(model.subset_names), subsets=model.subsets.cpu().numpy().astype(bool),
            classifier_feature_modalities=self.classifier_feature_modalities,
        )
        was_training = model.training
        model.eval()
        cuda_devices = []
        if device.type == "cuda":
            cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
        try:
            # A forked RNG: evaluating must not shift the training run's random stream.
            with torch.no_grad(), torch.random.fork_rng(devices=cuda_devices):
                torch.manual_seed(_derived_seed(self.options.seed, "rank", rank.rank))
                return self._run(ctx, eval_batches, probe_train_batches)
        finally:
            model.train(was_training)

    def _run(self, ctx: PassContext, eval_batches: Iterable, probe_train_batches: Iterable | None) -> EvaluationResult:
        accumulators = [(name, accumulator_for(name)(ctx)) for name in self.options.metrics]
        for _, accumulator in accumulators:
            accumulator.prepare(probe_train_batches)

        num_samples = 0
        for raw in eval_batches:
            batch = EvalBatch(ctx, *to_device(unpack_batch(raw), ctx.device))
            num_samples += batch.size
            for _, accumulator in accumulators:
                accumulator.observe(batch)

        self._prior_pass(ctx, [a for _, a in accumulators])

        payloads = {name: a.payload() for name, a in accumulators}
        if any(p is not None for p in payloads.values()):
            gathered = all_gather_objects(payloads)
            for name, accumulator in accumulators:
                accumulator.after_gather([g[name] for g in gathered])

        parts = [torch.tensor([float(num_samples)], dtype=torch.float64)] + [a.sums() for _, a in accumulators]
        reduced = all_reduce_sum(torch.cat(parts))
        records = [MetricRecord("evaluated_samples", float(reduced[0]), ctx.context())]
        offset = 1
        for part, (_, accumulator) in zip(parts[1:], accumulators):
            records.extend(accumulator.records(reduced[offset: offset + len(part)]))
            offset += len(part)
        return EvaluationResult(records)

    def _prior_pass(self, ctx: PassContext, accumulators: list[Accumulator]) -> None:
        """Prior samples in chunks of fixed size, chunk i on rank i mod world size, each from its
        own seed: the same samples whatever the number of ranks."""
        needed = max((a.prior_samples_needed for a in accumulators), default=0)
        chunk_size = self.options.prior_batch_size
        for chunk in range(ctx.rank.rank, math.ceil(needed / chunk_size), ctx.rank.world_size):
            start = chunk * chunk_size
            torch.manual_seed(_derived_seed(self.options.seed, "prior-chunk", chunk))
            samples = ctx.model.sample_prior(min(chunk_size, needed - start))
            view = PriorChunk(ctx, start, samples)
            for accumulator in accumulators:
                accumulator.observe_prior(view)
