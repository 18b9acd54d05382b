"""The evaluation of one training: classifiers, probe data and the evaluator, set up once.

``EvaluationSession`` binds the training's config to the rank-sharded ``Evaluator``: it
loads the coherence classifiers (refusing unmeasured or weak ones), draws the probe's
training rows as a deterministic sample of the training split, adds the sweep
``objective`` to the results, and renders what the tracker logs of the generations: image
grids, and text decoded to strings (conditional generations of a few test tuples from every
subset, and prior samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_pipelines.datasets import dataset_descriptor
from data_pipelines.manifest import Manifest, load_manifest
from mmplatform.config import TrainConfig
from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator
from mmplatform.evaluation.metrics import METRICS, PROBE_OPTIONS, needs_classifiers
from mmplatform.evaluation.results import EvaluationResult, MetricRecord
from mmplatform.privacy import samples_may_be_logged
from models.families import model_family

GRID_SAMPLES = 8
"""Test tuples shown per grid (columns); the rows are the subsets."""
PROBE_METRICS = {metric.name for metric in METRICS.values() if metric.options == PROBE_OPTIONS}
"""The metrics that fit a latent probe on encoded training rows (every latent_probe* variant)."""


def classifiers_dir(config: TrainConfig) -> Path:
    return Path(config.with_resolved_paths().evaluation.classifiers_dir)


def evaluated_modalities(config: TrainConfig, manifest: Manifest) -> list[str]:
    return list(config.data.modalities or manifest.modality_names)


def check_classifiers(config: TrainConfig) -> dict[str, float]:
    """Refuse (``ClassifierError``) classifiers with an unknown or too low test score."""
    from mmplatform.classifier_gate import check_scores

    manifest = load_manifest(config.data.root() / "train")
    return check_scores(
        classifiers_dir(config), evaluated_modalities(config, manifest), config.evaluation.min_classifier_score
    )


def objective(scalars: dict[str, float], weights: dict[str, float]) -> float | None:
    """Weighted average of the metrics in ``weights`` that this evaluation produced."""
    present = {name: weight for name, weight in weights.items() if name in scalars and weight > 0}
    if not present:
        return None
    return sum(scalars[name] * weight for name, weight in present.items()) / sum(present.values())


@dataclass(frozen=True)
class GeneratedSamples:
    """What the tracker shows of one modality's generations: an image grid or decoded text."""

    kind: str
    """``conditional`` (first row/line the input, then one per subset) or ``random`` (prior samples)."""
    modality: str
    image: torch.Tensor | None = None
    """Grid ``[3, H, W]`` in [0, 1]."""
    text: str | None = None
    """One line per generated text, ``<subset>: <text>``."""

    def context(self) -> dict[str, str]:
        return {"kind": self.kind, "modality": self.modality, "split": "test"}


@dataclass
class EvaluationOutcome:
    result: EvaluationResult
    samples: list[GeneratedSamples] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        return self.result.scalars()

    @property
    def records(self) -> list[MetricRecord]:
        return self.result.records


class EvaluationSession:
    def __init__(self, config: TrainConfig, model: nn.Module, train_dir: Path, device: torch.device) -> None:
        from data_pipelines.readers import EvalReader

        self.config = config
        self.model = model
        manifest = load_manifest(train_dir)
        modalities = evaluated_modalities(config, manifest)
        metrics = set(config.evaluation.metrics)
        classifiers = {}
        if needs_classifiers(metrics):
            from mmplatform.coherence_classifiers import load_classifiers

            check_classifiers(config)
            classifiers = load_classifiers(classifiers_dir(config), manifest, modalities, device)
        images = tuple(spec.name for spec in manifest.modalities if spec.kind == "image" and spec.name in modalities)
        abilities = model_family(config.model.family).abilities
        self.unconditional_generation = abilities.unconditional_generation
        options = EvaluationOptions.from_config(
            config.evaluation, seed=config.training.seed, label_kind=manifest.label_kind,
            label_names=manifest.label_names, prd_modalities=images,
            unconditional_generation=abilities.unconditional_generation,
        )
        self.evaluator = Evaluator(options, classifiers)
        self.image_modalities = images
        self.text_modalities = {spec.name: spec for spec in manifest.modalities
                                if spec.kind == "text" and spec.name in modalities}
        self.decode_text = dataset_descriptor(manifest.dataset).decode_text
        self.log_samples = samples_may_be_logged(config, manifest)
        self.probe_reader = None
        if metrics & PROBE_METRICS:
            # The probe trains on a fixed, seeded sample of the training split, not all of it.
            self.probe_reader = EvalReader(
                train_dir, batch_size=config.data.eval_batch_size, modalities=config.data.modalities,
                max_samples=config.evaluation.probe_train_samples,
            )

    def run(self, eval_reader, epoch: int, rank: int) -> EvaluationOutcome:
        from data_pipelines.readers import make_loader

        workers = self.config.data.loader_workers
        probe_batches = make_loader(self.probe_reader, workers) if self.probe_reader is not None else None
        result = self.evaluator.evaluate(self.model, make_loader(eval_reader, workers), probe_batches)
        # A family's own evaluation measurements (JNF: the HMC acceptance rate of this pass's chains).
        for name, diagnostic in self._diagnostics().items():
            result.records.append(MetricRecord(name, diagnostic, {"split": "test"}))
        value = objective(result.scalars(), self.config.evaluation.objective_weights)
        if value is not None:
            result.records.append(MetricRecord("objective", value, {"split": "test"}))
        # A restricted dataset's samples are never rendered, so there is nothing to leak.
        samples = self._generated_samples(eval_reader) if rank == 0 and self.log_samples else []
        self._diagnostics()  # the sample grids' chains are not the pass's: the next pass starts afresh
        return EvaluationOutcome(result, samples)

    def _diagnostics(self) -> dict[str, float]:
        read = getattr(self.model, "evaluation_diagnostics", None)
        return read() if read is not None else {}

    @torch.no_grad()
    def _generated_samples(self, eval_reader) -> list[GeneratedSamples]:
        """Conditional generations of a few test tuples from every subset, and prior samples."""
        from torchvision.utils import make_grid

        first = next(iter(eval_reader), None)
        if first is None:
            return []
        device = next(self.model.parameters()).device
        inputs = {name: tensor[:GRID_SAMPLES].to(device) for name, tensor in first.inputs.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            generated = self.model.generate(inputs)  # modality -> [S, B, ...]
            prior = self.model.sample_prior(GRID_SAMPLES) if self.unconditional_generation else None
        finally:
            self.model.train(was_training)
        samples = []
        for name in self.image_modalities:
            rows = torch.cat([inputs[name][None], generated[name]], dim=0)  # first row: the input
            grid = make_grid(rows.flatten(0, 1).float().cpu(), nrow=rows.shape[1])
            samples.append(GeneratedSamples("conditional", name, image=grid))
            if prior is not None:
                samples.append(GeneratedSamples("random", name, image=make_grid(prior[name].float().cpu(), nrow=GRID_SAMPLES)))
        for name, spec in self.text_modalities.items():
            def lines(label: str, ids: torch.Tensor, spec=spec) -> list[str]:
                return [f"{label}: {self.decode_text(row, spec.vocabulary)}" for row in ids.cpu().numpy()]

            conditional = lines("input", inputs[name])
            for subset, texts in zip(self.model.subset_names, generated[name]):
                conditional += lines(subset, texts)
            samples.append(GeneratedSamples("conditional", name, text="\n".join(conditional)))
            if prior is not None:
                samples.append(GeneratedSamples("random", name, text="\n".join(lines("prior", prior[name]))))
        return samples
