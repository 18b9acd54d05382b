"""The evaluation of one training: classifiers, probe data and the evaluator, set up once.

``EvaluationSession`` binds the training's config to the rank-sharded ``Evaluator``: it
loads the coherence classifiers (refusing unmeasured or weak ones), draws the probe's
training rows as a deterministic sample of the training split, adds the sweep
``objective`` to the results, and renders the image grids of conditional generations that
the tracker logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_pipelines.manifest import Manifest, load_manifest
from mmplatform.config import TrainConfig
from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator
from mmplatform.evaluation.results import EvaluationResult, MetricRecord

CLASSIFIER_METRICS = {"coherence", "prd"}
GRID_SAMPLES = 8
"""Test tuples shown per grid (columns); the rows are the subsets."""


def classifiers_dir(config: TrainConfig) -> Path:
    return Path(config.with_resolved_paths().evaluation.classifiers_dir)


def evaluated_modalities(config: TrainConfig, manifest: Manifest) -> list[str]:
    return list(config.data.modalities or manifest.modality_names)


def check_classifiers(config: TrainConfig) -> dict[str, float]:
    """Refuse (``ClassifierError``) classifiers with unknown or too low test accuracy."""
    from mmplatform.classifier_gate import check_accuracy

    manifest = load_manifest(config.data.root() / "train")
    return check_accuracy(
        classifiers_dir(config), evaluated_modalities(config, manifest), config.evaluation.min_classifier_accuracy
    )


def objective(scalars: dict[str, float], weights: dict[str, float]) -> float | None:
    """Weighted average of the metrics in ``weights`` that this evaluation produced."""
    present = {name: weight for name, weight in weights.items() if name in scalars and weight > 0}
    if not present:
        return None
    return sum(scalars[name] * weight for name, weight in present.items()) / sum(present.values())


@dataclass
class EvaluationOutcome:
    result: EvaluationResult
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """Image grids ``[3, H, W]`` in [0, 1], keyed by ``<kind>/<modality>``."""

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
        if metrics & CLASSIFIER_METRICS:
            from mmplatform.coherence_classifiers import load_classifiers

            check_classifiers(config)
            classifiers = load_classifiers(classifiers_dir(config), manifest, modalities, device)
        images = tuple(spec.name for spec in manifest.modalities if spec.kind == "image" and spec.name in modalities)
        options = EvaluationOptions.from_config(
            config.evaluation, seed=config.training.seed, label_kind=manifest.label_kind, prd_modalities=images,
        )
        self.evaluator = Evaluator(options, classifiers)
        self.image_modalities = images
        self.probe_reader = None
        if "latent_probe" in metrics:
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
        value = objective(result.scalars(), self.config.evaluation.objective_weights)
        if value is not None:
            result.records.append(MetricRecord("objective", value, {"split": "test"}))
        images = self._image_grids(eval_reader) if rank == 0 else {}
        return EvaluationOutcome(result, images)

    @torch.no_grad()
    def _image_grids(self, eval_reader) -> dict[str, torch.Tensor]:
        """Conditional generations of a few test tuples from every subset, and prior samples."""
        from torchvision.utils import make_grid

        first = next(iter(eval_reader), None)
        if first is None or not self.image_modalities:
            return {}
        device = next(self.model.parameters()).device
        inputs = {name: tensor[:GRID_SAMPLES].to(device) for name, tensor in first.inputs.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            generated = self.model.generate(inputs)  # modality -> [S, B, C, H, W]
            prior = self.model.sample_prior(GRID_SAMPLES)
        finally:
            self.model.train(was_training)
        grids = {}
        for name in self.image_modalities:
            rows = torch.cat([inputs[name][None], generated[name]], dim=0)  # first row: the input
            grids[f"conditional/{name}"] = make_grid(rows.flatten(0, 1).float().cpu(), nrow=rows.shape[1])
            grids[f"random/{name}"] = make_grid(prior[name].float().cpu(), nrow=GRID_SAMPLES)
        return grids
