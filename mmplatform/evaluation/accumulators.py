"""Per-metric accumulators of the evaluation pass, registered against ``evaluation.metrics``.

An accumulator observes this rank's test batches (and prior samples), may exchange one
payload with the other ranks (``payload`` / ``after_gather``), contributes float64 sums to the
pass's single all-reduce (``sums``) and turns the reduced sums into ``MetricRecord``s. The
batches it sees are lazy views, so a batch is generated and classified once however many
metrics use it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from mmplatform.evaluation import metrics
from mmplatform.evaluation.label_ranking import ranking_score_per_label
from mmplatform.evaluation.coherence import CoherenceCounts, coherence_scorer, coherence_summaries
from mmplatform.evaluation.collectives import RankInfo, all_gather_objects
from mmplatform.evaluation.key_sample import PrioritySample, SampleState, key_priorities, merge_states
from mmplatform.evaluation.latent_probe import LinearProbe, MultiLabelProbe, fit_multilabel_probes, fit_probes
from mmplatform.evaluation.prd import prd_summaries
from mmplatform.evaluation.results import MetricRecord

if TYPE_CHECKING:
    from mmplatform.evaluation.evaluator import EvaluationOptions

logger = logging.getLogger(__name__)


def unpack_batch(batch: Any) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """``(inputs, labels, keys)`` from a tuple or from an object with those attributes."""
    if isinstance(batch, (tuple, list)):
        inputs, labels, keys = batch
    else:
        inputs, labels, keys = batch.inputs, batch.labels, batch.keys
    return inputs, labels, [str(k) for k in keys]


def to_device(batch, device: torch.device):
    inputs, labels, keys = batch
    return {name: t.to(device, non_blocking=True) for name, t in inputs.items()}, labels.to(device), keys


@dataclass
class PassContext:
    model: nn.Module
    device: torch.device
    options: "EvaluationOptions"
    classifiers: Mapping[str, nn.Module]
    image_features: Mapping[str, Any]
    rank: RankInfo
    modality_names: list[str]
    subset_names: list[str]
    subsets: np.ndarray  # [S, M] bool
    shared: dict[str, Any] = field(default_factory=dict)
    """Work two accumulators of the pass both need (the latent probes of AP and AUROC), by name."""
    classifier_feature_modalities: frozenset[str] = frozenset()
    """Modalities whose PRD features are their classifier's own ``features(x)`` (and whose
    classifier's ``head(features)`` is its ``forward(x)``): the logits of an image are then read
    off its PRD features, one pass of the classifier's body instead of two."""

    def context(self, **extra: str) -> dict[str, str]:
        return {"split": self.options.split, **extra}

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``name`` is asked for in this pass, the same value after.
        Every rank runs the same accumulators in the same order, so collectives inside stay matched."""
        if name not in self.shared:
            self.shared[name] = compute()
        return self.shared[name]


def _apply_flat(fn, samples: Tensor, event_dims: int) -> Tensor:
    """Apply a per-sample network to ``[*lead, *event]`` by flattening the leading dims."""
    lead = samples.shape[: samples.dim() - event_dims]
    out = fn(samples.reshape(-1, *samples.shape[samples.dim() - event_dims:]))
    return out.reshape(*lead, *out.shape[1:])


def _image_features(ctx: PassContext, modality: str, samples: Tensor, event_dims: int) -> Tensor:
    """PRD features ``[*lead, F]`` of images ``[*lead, *event]``."""
    if modality in ctx.classifier_feature_modalities:
        return _apply_flat(ctx.classifiers[modality].features, samples, event_dims)
    return _apply_flat(ctx.image_features[modality], samples, event_dims)


def _classifier_logits(ctx: PassContext, modality: str, samples: Tensor, event_dims: int,
                       features: Callable[[], Tensor]) -> Tensor:
    """Logits of images; from their (cached) PRD ``features()`` where those are the classifier's own."""
    classifier = ctx.classifiers[modality]
    if modality in ctx.classifier_feature_modalities:
        return classifier.head(features())
    return _apply_flat(classifier, samples, event_dims)


class EvalBatch:
    def __init__(self, ctx: PassContext, inputs: dict[str, Tensor], labels: Tensor, keys: Sequence[str]) -> None:
        self.ctx, self.inputs, self.labels, self.keys = ctx, inputs, labels, list(keys)
        self._logits: dict[str, Tensor] = {}
        self._generated_features: dict[str, Tensor] = {}
        self._shared: dict[str, Any] = {}

    @property
    def size(self) -> int:
        return len(self.labels)

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per batch, whichever accumulator asks first (see ``PassContext.once``)."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @cached_property
    def generated(self) -> dict[str, Tensor]:
        """modality -> ``[S, B, ...]`` decoded from every subset posterior."""
        generated = self.ctx.model.generate(self.inputs)
        for name, samples in generated.items():
            if samples.shape[:2] != (len(self.ctx.subset_names), self.size):
                raise ValueError(f"generate()[{name!r}] has shape {tuple(samples.shape)}, expected [S, B, ...]")
        return generated

    @cached_property
    def posterior_means(self) -> Tensor:
        return self.ctx.model.subset_posteriors(self.inputs).mean  # [S, B, D]

    def generated_logits(self, modality: str) -> Tensor:
        if modality not in self._logits:
            samples = self.generated[modality]
            self._logits[modality] = _classifier_logits(
                self.ctx, modality, samples, samples.dim() - 2, lambda: self.generated_features(modality)
            )
        return self._logits[modality]

    def generated_features(self, modality: str) -> Tensor:
        if modality not in self._generated_features:
            samples = self.generated[modality]
            self._generated_features[modality] = _image_features(self.ctx, modality, samples, samples.dim() - 2)
        return self._generated_features[modality]

    def real_features(self, modality: str) -> Tensor:
        return self.ctx.image_features[modality](self.inputs[modality])


class PriorChunk:
    """Prior samples ``start .. start + size - 1`` of the pass, from a seed of their own."""

    def __init__(self, ctx: PassContext, start: int, samples: dict[str, Tensor]) -> None:
        self.ctx, self.start, self.samples = ctx, start, samples
        self._logits: dict[str, Tensor] = {}
        self._features: dict[str, Tensor] = {}

    @property
    def size(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    def logits(self, modality: str) -> Tensor:
        if modality not in self._logits:
            samples = self.samples[modality]
            self._logits[modality] = _classifier_logits(
                self.ctx, modality, samples, samples.dim() - 1, lambda: self.features(modality)
            )
        return self._logits[modality]

    def features(self, modality: str) -> Tensor:
        if modality not in self._features:
            samples = self.samples[modality]
            self._features[modality] = _image_features(self.ctx, modality, samples, samples.dim() - 1)
        return self._features[modality]


# ----------------------------------------------------------------------------------------
# Accumulators: observe batches locally, then (optionally) exchange a payload, then add
# float64 sums to the shared all-reduce, then turn the reduced sums into records.


class Accumulator:
    prior_samples_needed = 0

    def __init__(self, ctx: PassContext) -> None:
        self.ctx = ctx

    def prepare(self, probe_train_batches: Iterable | None) -> None:
        """Before the test loop (may use collectives)."""

    def observe(self, batch: EvalBatch) -> None:
        pass

    def observe_prior(self, chunk: PriorChunk) -> None:
        pass

    def payload(self) -> Any:
        return None

    def after_gather(self, payloads: list[Any]) -> None:
        pass

    def sums(self) -> Tensor:
        return torch.zeros(0, dtype=torch.float64)

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        return []


ACCUMULATORS: dict[str, type[Accumulator]] = {}
"""Metric name (``mmplatform.evaluation.metrics``) -> the accumulator that computes it."""


def accumulates(metric: metrics.Metric):
    """Class decorator: ``cls`` computes the registered ``metric``."""
    def decorator(cls: type[Accumulator]) -> type[Accumulator]:
        if metric.name in ACCUMULATORS:
            raise ValueError(f"metric {metric.name!r} has two accumulators")
        ACCUMULATORS[metric.name] = cls
        return cls

    return decorator


def accumulator_for(name: str) -> type[Accumulator]:
    if name not in ACCUMULATORS:
        raise KeyError(f"metric {name!r} is registered but nothing computes it (no accumulator)")
    return ACCUMULATORS[name]


def _train_probe_rows(ctx: PassContext, probe_train_batches: Iterable | None):
    """The seeded sample of encoded training rows the latent probes fit on, the same on every rank."""
    if probe_train_batches is None:
        raise ValueError("the latent probe needs probe_train_batches (encoded training samples)")
    options = ctx.options
    sample = PrioritySample(options.probe_train_samples)
    for raw in probe_train_batches:
        inputs, labels, keys = to_device(unpack_batch(raw), ctx.device)
        means = ctx.model.subset_posteriors(inputs).mean  # [S, B, D]
        sample.add(key_priorities(keys, options.seed), {"means": means.transpose(0, 1), "labels": labels})
    merged = merge_states(all_gather_objects(sample.state()), options.probe_train_samples)
    if len(merged) == 0:
        raise ValueError("the latent probe got no training samples")
    return merged.rows["means"].numpy(), merged.rows["labels"].numpy()


def _finite_means(means: np.ndarray) -> bool:
    """A model whose posterior means overflow (a diverging trial) has no latent probe this epoch:
    its results are left out (the objective then falls back, and ASHA stops it), not a crash."""
    if np.isfinite(means).all():
        return True
    logger.warning("latent probe skipped: %d of %d encoded training rows have non-finite posterior means",
                   int((~np.isfinite(means)).any(axis=(1, 2)).sum()), len(means))
    return False


@accumulates(metrics.COHERENCE)
class CoherenceAccumulator(Accumulator):
    """Conditional coherence per (subset, modality) and random coherence (seed 000, 5.2.2)."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx)
        self.modalities = [m for m in ctx.modality_names if m in ctx.classifiers]
        if not self.modalities:
            raise ValueError("coherence needs a classifier for at least one modality")
        self.scorer = coherence_scorer(ctx.options.label_kind)
        self.counts = CoherenceCounts.zeros(len(ctx.subset_names), len(self.modalities))
        self.random = torch.zeros(2, dtype=torch.float64)  # hits, total
        self.prior_samples_needed = ctx.options.random_coherence_samples if ctx.options.unconditional_generation else 0

    def observe(self, batch: EvalBatch) -> None:
        num_subsets = len(self.ctx.subset_names)
        labels = batch.labels.repeat(num_subsets, *([1] * (batch.labels.dim() - 1)))
        for j, modality in enumerate(self.modalities):
            logits = batch.generated_logits(modality)  # [S, B, C]
            hits = self.scorer.hits(logits.reshape(-1, logits.shape[-1]), labels).reshape(num_subsets, -1)
            self.counts.hits[:, j] += hits.sum(dim=1).cpu()
            self.counts.total[:, j] += hits.shape[1]

    def observe_prior(self, chunk: PriorChunk) -> None:
        used = max(0, min(chunk.size, self.ctx.options.random_coherence_samples - chunk.start))
        if used == 0:
            return
        agreement = self.scorer.agreement([chunk.logits(m)[:used] for m in self.modalities])
        self.random += torch.tensor([float(agreement.sum()), float(used)], dtype=torch.float64)

    def sums(self) -> Tensor:
        return torch.cat([self.counts.hits.flatten(), self.counts.total.flatten(), self.random])

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        n = self.counts.hits.numel()
        shape = self.counts.hits.shape
        counts = CoherenceCounts(reduced[:n].reshape(shape), reduced[n: 2 * n].reshape(shape))
        accuracy = counts.accuracy()
        columns = [self.ctx.modality_names.index(m) for m in self.modalities]
        subsets = self.ctx.subsets[:, columns]
        records = []
        for s, subset in enumerate(self.ctx.subset_names):
            for j, modality in enumerate(self.modalities):
                kind = "reconstruction" if subsets[s, j] else "missing"
                records.append(MetricRecord(
                    metrics.COHERENCE.result, float(accuracy[s, j]), self.ctx.context(kind=kind, subset=subset, modality=modality)
                ))
        for kind, value in coherence_summaries(accuracy, subsets).items():
            records.append(MetricRecord(metrics.COHERENCE.result, value, self.ctx.context(kind=kind)))
        random_hits, random_total = reduced[2 * n:].tolist()
        if random_total > 0:
            records.append(MetricRecord(metrics.COHERENCE.result, random_hits / random_total, self.ctx.context(kind="random")))
        return records


@accumulates(metrics.LATENT_PROBE)
class LatentProbeAccumulator(Accumulator):
    """Logistic-regression accuracy per subset posterior mean (seed 000, 5.2.1)."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx)
        self.probes: list[LinearProbe] = []
        num_subsets = len(ctx.subset_names)
        self.hits = torch.zeros(num_subsets, dtype=torch.float64)
        self.total = torch.zeros(num_subsets, dtype=torch.float64)

    def prepare(self, probe_train_batches: Iterable | None) -> None:
        means, labels = _train_probe_rows(self.ctx, probe_train_batches)
        if _finite_means(means):
            self.probes = fit_probes(means, labels, self.ctx.options.probe_settings)

    def observe(self, batch: EvalBatch) -> None:
        if not self.probes:
            return
        means = np.nan_to_num(batch.posterior_means.float().cpu().numpy())  # scored, never fitted on
        labels = batch.labels.cpu().numpy()
        for s, probe in enumerate(self.probes):
            hits = probe.hits(means[s], labels)
            self.hits[s] += float(hits.sum())
            self.total[s] += len(hits)

    def sums(self) -> Tensor:
        return torch.cat([self.hits, self.total])

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        num_subsets = len(self.ctx.subset_names)
        hits, total = reduced[:num_subsets], reduced[num_subsets:]
        if float(total.min()) <= 0:
            return []
        accuracy = (hits / total).tolist()
        records = [
            MetricRecord(metrics.LATENT_PROBE.result, value, self.ctx.context(subset=subset))
            for subset, value in zip(self.ctx.subset_names, accuracy)
        ]
        records.append(MetricRecord(metrics.LATENT_PROBE.result, float(np.mean(accuracy)), self.ctx.context(kind="all")))
        return records


PRD_VALUES = (metrics.PRD.result, "prd_f8", "prd_f1_8")
"""The PRD scalar and the two F-beta summaries of Sajjadi et al. (F8 recall-weighted, F1/8 precision-weighted)."""


@accumulates(metrics.PRD)
class PRDAccumulator(Accumulator):
    """PRD (Sajjadi et al. 2018) of generated vs real features per (subset, modality) and of
    prior samples vs real per modality, summarized like coherence (thesis Table 6.3)."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx)
        wanted = ctx.options.prd_modalities
        self.modalities = [
            m for m in ctx.modality_names if m in ctx.image_features and (wanted is None or m in wanted)
        ]
        if not self.modalities:
            raise ValueError("PRD needs image features for at least one modality")
        capacity = ctx.options.prd_samples
        self.test_sample = PrioritySample(capacity)
        self.prior_sample = PrioritySample(capacity)
        prior = ctx.options.unconditional_generation
        self.prior_samples_needed = capacity if prior else 0
        # Pair order: every (subset, modality), then every modality's prior ("random") pair (none
        # for a model without unconditional generation).
        self.pairs: list[tuple[int | None, str]] = [
            (s, m) for s in range(len(ctx.subset_names)) for m in self.modalities
        ] + [(None, m) for m in self.modalities if prior]
        self.values = torch.zeros(len(self.pairs), len(PRD_VALUES), dtype=torch.float64)

    def observe(self, batch: EvalBatch) -> None:
        rows = {}
        for m in self.modalities:
            rows[f"real/{m}"] = batch.real_features(m)
            rows[f"generated/{m}"] = batch.generated_features(m).transpose(0, 1)  # [B, S, F]
        self.test_sample.add(key_priorities(batch.keys, self.ctx.options.seed), rows)

    def observe_prior(self, chunk: PriorChunk) -> None:
        used = max(0, min(chunk.size, self.ctx.options.prd_samples - chunk.start))
        if used == 0:
            return
        rows = {f"prior/{m}": chunk.features(m)[:used] for m in self.modalities}
        self.prior_sample.add(np.arange(chunk.start, chunk.start + used), rows)

    def payload(self) -> Any:
        return self.test_sample.state(), self.prior_sample.state()

    def after_gather(self, payloads: list[Any]) -> None:
        capacity = self.ctx.options.prd_samples
        test = merge_states([p[0] for p in payloads], capacity)
        prior = merge_states([p[1] for p in payloads], capacity)
        rank = self.ctx.rank
        # Each rank computes every world_size-th pair, all of its pairs clustered together on the
        # evaluation's device; the all-reduce then assembles the table. A pair's values depend on
        # its features and the seed alone, not on the pairs it is batched with.
        mine = list(range(rank.rank, len(self.pairs), rank.world_size))
        features = {index: self._pair_features(test, prior, *self.pairs[index]) for index in mine}
        computed = [index for index in mine if features[index] is not None]
        summaries = prd_summaries([features[index] for index in computed], self.ctx.options.prd, self.ctx.device)
        self.values[mine] = math.nan  # the skipped pairs; the computed ones are set next
        for index, summary in zip(computed, summaries):
            self.values[index] = torch.tensor([summary.score, summary.f_8, summary.f_1_8], dtype=torch.float64)

    def _pair_features(self, test: SampleState, prior: SampleState, subset: int | None, modality: str):
        """``(generated, real)`` features of a pair, or ``None`` (with a warning) when PRD cannot score it."""
        if len(test) == 0:
            return None
        real = test.rows[f"real/{modality}"]
        if subset is None:
            generated = prior.rows[f"prior/{modality}"] if len(prior) else real[:0]
        else:
            generated = test.rows[f"generated/{modality}"][:, subset]
        # Equal counts (enforce_balance): the first n of each set, both already seeded samples.
        n = min(len(real), len(generated))
        if 2 * n < self.ctx.options.prd.num_clusters:
            logger.warning("PRD skipped for %s: %d samples cannot fill %d clusters",
                           modality, n, self.ctx.options.prd.num_clusters)
            return None
        if not torch.isfinite(generated[:n]).all():
            logger.warning("PRD skipped for %s: the model generated non-finite samples", modality)
            return None
        return generated[:n], real[:n]

    def sums(self) -> Tensor:
        return self.values.flatten()

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        values = reduced.reshape(len(self.pairs), len(PRD_VALUES)).numpy()
        records = []
        by_kind: dict[str, list[np.ndarray]] = {"missing": [], "reconstruction": [], "all": [], "random": []}
        for (subset, modality), row in zip(self.pairs, values):
            if subset is None:
                kind, context = "random", self.ctx.context(kind="random", modality=modality)
            else:
                present = self.ctx.subsets[subset, self.ctx.modality_names.index(modality)]
                kind = "reconstruction" if present else "missing"
                context = self.ctx.context(kind=kind, subset=self.ctx.subset_names[subset], modality=modality)
                by_kind["all"].append(row)
            by_kind[kind].append(row)
            if not np.isnan(row).any():
                records.extend(MetricRecord(name, float(v), context) for name, v in zip(PRD_VALUES, row))
        for kind, rows in by_kind.items():
            finite = [r for r in rows if not np.isnan(r).any()]
            if finite:
                means = np.mean(finite, axis=0)
                context = self.ctx.context(kind=kind)
                records.extend(MetricRecord(name, float(v), context) for name, v in zip(PRD_VALUES, means))
        return records


@accumulates(metrics.LOG_LIKELIHOOD)
class LogLikelihoodAccumulator(Accumulator):
    """Mean importance-sampled log p(X) over the test samples (MoPoE: K = 12)."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx)
        self.totals = torch.zeros(2, dtype=torch.float64)  # sum, count

    def observe(self, batch: EvalBatch) -> None:
        values = self.ctx.model.log_likelihood(batch.inputs, self.ctx.options.log_likelihood_samples)
        self.totals += torch.tensor([float(values.double().sum()), float(values.numel())], dtype=torch.float64)

    def sums(self) -> Tensor:
        return self.totals.clone()

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        total, count = reduced.tolist()
        return [MetricRecord(metrics.LOG_LIKELIHOOD.result, total / count, self.ctx.context())] if count > 0 else []


class _RankingAccumulator(Accumulator):
    """A ranking score per attribute (``label_ranking``: average precision or AUROC) of scores
    kept for every evaluated tuple, per group.

    A group is one scored view of the test tuples (a (subset, modality) pair of generations, a
    subset's latent probe). Ranking scores are not sums over samples: the ranks gather their
    ``[N, A]`` scores and labels (one collective), each rank computes every world_size-th group,
    and the all-reduce assembles the ``[groups, A]`` table. A subclass names its ``metric`` and
    its ``ranking`` (a ``RANKING_SCORES`` key)."""

    metric: metrics.Metric
    ranking: str

    def __init__(self, ctx: PassContext, num_groups: int) -> None:
        super().__init__(ctx)
        self.num_groups = num_groups
        self.scores: list[list[Tensor]] = [[] for _ in range(num_groups)]
        self.labels: list[Tensor] = []
        self.values: Tensor | None = None

    def keep(self, group_scores: Sequence[Tensor], labels: Tensor) -> None:
        for group, scores in enumerate(group_scores):
            self.scores[group].append(scores.float().cpu())
        self.labels.append(labels.cpu())

    def payload(self) -> Any:
        return [torch.cat(s) if s else None for s in self.scores], torch.cat(self.labels) if self.labels else None

    def after_gather(self, payloads: list[Any]) -> None:
        labels = [p[1] for p in payloads if p[1] is not None]
        num_labels = len(self.ctx.options.label_names)
        self.values = torch.zeros(self.num_groups, num_labels, dtype=torch.float64)
        if not labels:
            self.values[:] = math.nan
            return
        labels_all = torch.cat(labels).numpy()
        rank = self.ctx.rank
        for group in range(rank.rank, self.num_groups, rank.world_size):
            scores = torch.cat([p[0][group] for p in payloads if p[0][group] is not None]).numpy()
            self.values[group] = torch.from_numpy(ranking_score_per_label(self.ranking, scores, labels_all))

    def sums(self) -> Tensor:
        if self.values is None:  # the pass gathers only when some accumulator has a payload
            raise RuntimeError(f"{self.metric.name} needs the gathered scores")
        # NaN (an undefined score) only on the rank that owns the group; others add 0.
        return self.values.flatten()

    def table(self, reduced: Tensor) -> np.ndarray:
        return reduced.reshape(self.num_groups, -1).numpy()

    def attribute_records(self, rows: np.ndarray, kind: str) -> list[MetricRecord]:
        """The per-attribute view in Aim: each attribute's score averaged over ``rows``."""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_attribute = np.nanmean(rows, axis=0)
        return [
            MetricRecord(self.metric.result, float(value), self.ctx.context(kind=kind, attribute=attribute))
            for attribute, value in zip(self.ctx.options.label_names, per_attribute) if np.isfinite(value)
        ]


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


class _CoherenceRankingAccumulator(_RankingAccumulator):
    """Conditional coherence of multi-label data (MoPoE's CelebA protocol, MMVM's CUB one): for
    every (subset, modality) pair, the ranking score of each attribute of the generated samples
    under the modality's classifier, against the attributes of the tuple they came from. There is
    no random coherence for attributes: agreement of prior samples is a single-label notion."""

    def __init__(self, ctx: PassContext) -> None:
        self.modalities = [m for m in ctx.modality_names if m in ctx.classifiers]
        if not self.modalities:
            raise ValueError("coherence needs a classifier for at least one modality")
        self.pairs = [(s, m) for s in range(len(ctx.subset_names)) for m in self.modalities]
        super().__init__(ctx, len(self.pairs))

    def observe(self, batch: EvalBatch) -> None:
        logits = {m: batch.generated_logits(m) for m in self.modalities}  # [S, B, A]
        self.keep([logits[m][s] for s, m in self.pairs], batch.labels)

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        table = self.table(reduced)
        result = self.metric.result
        records, by_kind = [], {"missing": [], "reconstruction": [], "all": []}
        for (subset, modality), row in zip(self.pairs, table):
            present = self.ctx.subsets[subset, self.ctx.modality_names.index(modality)]
            kind = "reconstruction" if present else "missing"
            value = _nanmean(row)
            if math.isfinite(value):
                records.append(MetricRecord(result, value, self.ctx.context(
                    kind=kind, subset=self.ctx.subset_names[subset], modality=modality)))
            by_kind[kind].append(row)
            by_kind["all"].append(row)
        for kind, rows in by_kind.items():
            if rows:
                stacked = np.stack(rows)
                value = _nanmean(np.array([_nanmean(row) for row in stacked]))
                if math.isfinite(value):
                    records.append(MetricRecord(result, value, self.ctx.context(kind=kind)))
                records.extend(self.attribute_records(stacked, kind))
        return records


@accumulates(metrics.COHERENCE_AP)
class CoherenceAveragePrecisionAccumulator(_CoherenceRankingAccumulator):
    metric, ranking = metrics.COHERENCE_AP, "average_precision"


@accumulates(metrics.COHERENCE_AUROC)
class CoherenceAUROCAccumulator(_CoherenceRankingAccumulator):
    metric, ranking = metrics.COHERENCE_AUROC, "auroc"


class _LatentProbeRankingAccumulator(_RankingAccumulator):
    """The latent probe of multi-label data (MoPoE's CelebA protocol): per subset, one logistic
    regression per attribute on the posterior means, scored per attribute. The probes are fitted
    once per pass however many ranking scores read them."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx, len(ctx.subset_names))
        self.probes: list[MultiLabelProbe] = []

    def prepare(self, probe_train_batches: Iterable | None) -> None:
        self.probes = self.ctx.once("multilabel_probes", lambda: self._fit(probe_train_batches))

    def _fit(self, probe_train_batches: Iterable | None) -> list[MultiLabelProbe]:
        means, labels = _train_probe_rows(self.ctx, probe_train_batches)
        return fit_multilabel_probes(means, labels, self.ctx.options.probe_settings) if _finite_means(means) else []

    def observe(self, batch: EvalBatch) -> None:
        if not self.probes:
            return
        self.keep(batch.once("multilabel_probe_scores", lambda: self._scores(batch)), batch.labels)

    def _scores(self, batch: EvalBatch) -> list[Tensor]:
        means = np.nan_to_num(batch.posterior_means.float().cpu().numpy())  # scored, never fitted on
        return [torch.from_numpy(probe.scores(means[s])) for s, probe in enumerate(self.probes)]

    def records(self, reduced: Tensor) -> list[MetricRecord]:
        table = self.table(reduced)
        result = self.metric.result
        per_subset = [_nanmean(row) for row in table]
        records = [
            MetricRecord(result, value, self.ctx.context(subset=subset))
            for subset, value in zip(self.ctx.subset_names, per_subset) if math.isfinite(value)
        ]
        mean = _nanmean(np.array(per_subset))
        if math.isfinite(mean):
            records.append(MetricRecord(result, mean, self.ctx.context(kind="all")))
        records.extend(self.attribute_records(table, "all"))
        return records


@accumulates(metrics.LATENT_PROBE_AP)
class LatentProbeAveragePrecisionAccumulator(_LatentProbeRankingAccumulator):
    metric, ranking = metrics.LATENT_PROBE_AP, "average_precision"


@accumulates(metrics.LATENT_PROBE_AUROC)
class LatentProbeAUROCAccumulator(_LatentProbeRankingAccumulator):
    metric, ranking = metrics.LATENT_PROBE_AUROC, "auroc"
