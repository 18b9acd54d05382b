"""What an evaluation pass returns: values with the contexts the tracker logs them under.

Naming: ``MetricRecord.name`` is the metric (``coherence``, ``prd``, ``prd_f8``, ``prd_f1_8``,
``latent_accuracy``, ``log_likelihood``, ``evaluated_samples``) and ``context`` says which
value it is (``split``; ``kind`` in missing / reconstruction / random / all; ``subset``;
``modality``): the Aim view. ``flat_name`` folds the context into one key for
``ray.train.report`` and Tune: ``coherence_missing``, ``coherence_missing/m0_m1/m2``,
``latent_accuracy/m0``, ``prd_random/m1``, ``coherence_ap_missing/Smiling`` (per attribute);
training terms (``split`` ``train``) are ``train/<name>[/modality]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRecord:
    """One logged value: ``name`` plus Aim context (``split``, and ``kind``/``subset``/``modality``)."""

    name: str
    value: float
    context: Mapping[str, str]

    @property
    def is_pair_breakdown(self) -> bool:
        """A value of one (subset, modality) pair (coherence or PRD of the modality generated from
        the subset): a breakdown of the per-``kind`` means, which it is averaged into.

        PolyMNIST-3 has 21 pairs, so 84 of a run's 126 metric series (coherence and three PRD values);
        PolyMNIST-5 has 155 pairs, 620 series. Aim's runs page ships every series of every run, so the training's Aim run keeps them only when
        ``tracking.pair_breakdowns`` is on (``mmplatform.training.run_tracking``). Ray Train's
        reported metrics and the checkpoints hold every value either way.
        """
        return "subset" in self.context and "modality" in self.context

    @property
    def flat_name(self) -> str:
        """``[train/]name[_kind][/subset][/modality][/attribute]``: unique within an epoch, stable across runs."""
        kind = self.context.get("kind")
        flat = self.name if kind in (None, "all") else f"{self.name}_{kind}"
        if self.context.get("split") == "train":
            flat = f"train/{flat}"
        for part in ("subset", "modality", "attribute"):
            if part in self.context:
                flat += f"/{self.context[part]}"
        return flat


@dataclass
class EvaluationResult:
    records: list[MetricRecord]

    def scalars(self) -> dict[str, float]:
        """Flat ``{flat_name: value}`` for ``ray.train.report`` and Tune."""
        return {record.flat_name: record.value for record in self.records}

    def __getitem__(self, flat_name: str) -> float:
        return self.scalars()[flat_name]
