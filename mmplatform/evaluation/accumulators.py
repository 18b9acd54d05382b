"""Per-metric accumulators of the evaluation pass, registered by metric name.

An accumulator observes this rank's test batches (and prior samples), may exchange one
payload with the other ranks (``payload`` / ``after_gather``), contributes float64 sums to the
pass's single all-reduce (``sums``) and turns the reduced sums into ``MetricRecord``s. The
batches it sees are lazy views, so a batch is generated and classified once however many
metrics use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from mmplatform.evaluation.coherence import CoherenceCounts, coherence_scorer, coherence_summaries
from mmplatform.evaluation.collectives import RankInfo, all_gather_objects
from mmplatform.evaluation.key_sample import PrioritySample, SampleState, key_priorities, merge_states
from mmplatform.evaluation.latent_probe import LinearProbe, fit_probes
from mmplatform.evaluation.prd import prd_summary
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

    def context(self, **extra: str) -> dict[str, str]:
        return {"split": self.options.split, **extra}


def _apply_flat(fn, samples: Tensor, event_dims: int) -> Tensor:
    """Apply a per-sample network to ``[*lead, *event]`` by flattening the leading dims."""
    lead = samples.shape[: samples.dim() - event_dims]
    out = fn(samples.reshape(-1, *samples.shape[samples.dim() - event_dims:]))
    return out.reshape(*lead, *out.shape[1:])


class EvalBatch:
    def __init__(self, ctx: PassContext, inputs: dict[str, Tensor], labels: Tensor, keys: Sequence[str]) -> None:
        self.ctx, self.inputs, self.labels, self.keys = ctx, inputs, labels, list(keys)
        self._logits: dict[str, Tensor] = {}
        self._generated_features: dict[str, Tensor] = {}

    @property
    def size(self) -> int:
        return len(self.labels)

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
            self._logits[modality] = _apply_flat(self.ctx.classifiers[modality], samples, samples.dim() - 2)
        return self._logits[modality]

    def generated_features(self, modality: str) -> Tensor:
        if modality not in self._generated_features:
            samples = self.generated[modality]
            self._generated_features[modality] = _apply_flat(
                self.ctx.image_features[modality], samples, samples.dim() - 2
            )
        return self._generated_features[modality]

    def real_features(self, modality: str) -> Tensor:
        return self.ctx.image_features[modality](self.inputs[modality])


class PriorChunk:
    """Prior samples ``start .. start + size - 1`` of the pass, from a seed of their own."""

    def __init__(self, ctx: PassContext, start: int, samples: dict[str, Tensor]) -> None:
        self.ctx, self.start, self.samples = ctx, start, samples
        self._logits: dict[str, Tensor] = {}

    @property
    def size(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    def logits(self, modality: str) -> Tensor:
        if modality not in self._logits:
            samples = self.samples[modality]
            self._logits[modality] = _apply_flat(self.ctx.classifiers[modality], samples, samples.dim() - 1)
        return self._logits[modality]

    def features(self, modality: str) -> Tensor:
        return self.ctx.image_features[modality](self.samples[modality])


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
        self.prior_samples_needed = ctx.options.random_coherence_samples

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
                    "coherence", float(accuracy[s, j]), self.ctx.context(kind=kind, subset=subset, modality=modality)
                ))
        for kind, value in coherence_summaries(accuracy, subsets).items():
            records.append(MetricRecord("coherence", value, self.ctx.context(kind=kind)))
        random_hits, random_total = reduced[2 * n:].tolist()
        if random_total > 0:
            records.append(MetricRecord("coherence", random_hits / random_total, self.ctx.context(kind="random")))
        return records


class LatentProbeAccumulator(Accumulator):
    """Logistic-regression accuracy per subset posterior mean (seed 000, 5.2.1)."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__(ctx)
        self.probes: list[LinearProbe] = []
        num_subsets = len(ctx.subset_names)
        self.hits = torch.zeros(num_subsets, dtype=torch.float64)
        self.total = torch.zeros(num_subsets, dtype=torch.float64)

    def prepare(self, probe_train_batches: Iterable | None) -> None:
        if probe_train_batches is None:
            raise ValueError("the latent probe needs probe_train_batches (encoded training samples)")
        options = self.ctx.options
        sample = PrioritySample(options.probe_train_samples)
        for raw in probe_train_batches:
            inputs, labels, keys = to_device(unpack_batch(raw), self.ctx.device)
            means = self.ctx.model.subset_posteriors(inputs).mean  # [S, B, D]
            sample.add(key_priorities(keys, options.seed), {"means": means.transpose(0, 1), "labels": labels})
        merged = merge_states(all_gather_objects(sample.state()), options.probe_train_samples)
        if len(merged) == 0:
            raise ValueError("the latent probe got no training samples")
        self.probes = fit_probes(merged.rows["means"].numpy(), merged.rows["labels"].numpy(), options.probe_max_iter)

    def observe(self, batch: EvalBatch) -> None:
        means = batch.posterior_means.float().cpu().numpy()
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
            MetricRecord("latent_accuracy", value, self.ctx.context(subset=subset))
            for subset, value in zip(self.ctx.subset_names, accuracy)
        ]
        records.append(MetricRecord("latent_accuracy", float(np.mean(accuracy)), self.ctx.context(kind="all")))
        return records


PRD_VALUES = ("prd", "prd_f8", "prd_f1_8")


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
        self.prior_samples_needed = capacity
        # Pair order: every (subset, modality), then every modality's prior ("random") pair.
        self.pairs: list[tuple[int | None, str]] = [
            (s, m) for s in range(len(ctx.subset_names)) for m in self.modalities
        ] + [(None, m) for m in self.modalities]
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
        # Each rank computes every world_size-th pair; the all-reduce then assembles the table.
        for index in range(rank.rank, len(self.pairs), rank.world_size):
            subset, modality = self.pairs[index]
            self.values[index] = torch.tensor(self._pair_values(test, prior, subset, modality), dtype=torch.float64)

    def _pair_values(self, test: SampleState, prior: SampleState, subset: int | None, modality: str):
        if len(test) == 0:
            return [math.nan] * len(PRD_VALUES)
        real = test.rows[f"real/{modality}"].numpy()
        if subset is None:
            generated = prior.rows[f"prior/{modality}"].numpy() if len(prior) else real[:0]
        else:
            generated = test.rows[f"generated/{modality}"][:, subset].numpy()
        # Equal counts (enforce_balance): the first n of each set, both already seeded samples.
        n = min(len(real), len(generated))
        if 2 * n < self.ctx.options.prd.num_clusters:
            logger.warning("PRD skipped for %s: %d samples cannot fill %d clusters",
                           modality, n, self.ctx.options.prd.num_clusters)
            return [math.nan] * len(PRD_VALUES)
        summary = prd_summary(generated[:n], real[:n], self.ctx.options.prd)
        return [summary.score, summary.f_8, summary.f_1_8]

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
        return [MetricRecord("log_likelihood", total / count, self.ctx.context())] if count > 0 else []


METRIC_ACCUMULATORS: dict[str, type[Accumulator]] = {
    "coherence": CoherenceAccumulator,
    "latent_probe": LatentProbeAccumulator,
    "prd": PRDAccumulator,
    "log_likelihood": LogLikelihoodAccumulator,
}
