"""Coherence classifiers: one per modality, trained on the shards by the platform itself.

Coherence (and the default PRD features) are only as trustworthy as these classifiers, so
they are stored together with their measured test score (``classifiers.json``) and a
training refuses to evaluate with classifiers whose score is unknown or below
``evaluation.min_classifier_score``. What a dataset's classifiers are comes from its descriptor:
the architecture per modality, and from its label kind the loss (cross-entropy for classes,
binary cross-entropy for attributes) and the gated score (accuracy, or mean average precision
per attribute). Training runs on Ray Train like the VAEs: DDP over all modalities' classifiers
at once; the test score is computed from the gathered test logits, so it is exact on any number
of ranks.

Training is gated, not fixed-length: after every epoch the test score of every modality is
measured and shown, and training stops as soon as all of them pass ``min_score`` (or at
``max_epochs``). A run that hits the cap still stores what it trained, with its score, and
the driver fails with one line naming the weak modality and the command that trains longer, so
a user is never left with a gate they cannot pass by rerunning the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import numpy as np
from torch import nn
from torch.nn import functional as F

from data_pipelines.datasets import dataset_descriptor
from data_pipelines.manifest import LABEL_KINDS, Manifest, load_manifest
from mmplatform.classifier_gate import (  # noqa: F401  (re-exported: the gate is part of this API)
    DEFAULT_MAX_EPOCHS,
    METRICS_FILE,
    ClassifierError,
    ClassifierSettings,
    check_scores,
    progress_line,
    read_scores,
    train_more_command,
    weak_modalities,
)
from mmplatform.evaluation.label_ranking import mean_average_precision
from mmplatform.evaluation.collectives import all_gather_objects
from models.classifiers import build_classifier

WEIGHTS_FILE = "classifiers.pt"

logger = logging.getLogger(__name__)


class ClassifierBank(nn.ModuleDict):
    """One classifier per modality with a single forward, so DDP can wrap them together."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self[name](x) for name, x in inputs.items()}


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels.long())


def _binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


LOSSES = {"cross_entropy": _cross_entropy, "binary_cross_entropy": _binary_cross_entropy}
"""Training loss of a label kind's classifiers (``LabelKindRules.classifier_loss``)."""


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")


SCORES = {"accuracy": _accuracy, "mean_average_precision": mean_average_precision}
"""Test score that gates a label kind's classifiers (``LabelKindRules.classifier_score``)."""


def _classifier_bank(manifest: Manifest) -> ClassifierBank:
    try:
        descriptor = dataset_descriptor(manifest.dataset)
        architectures = {spec.name: descriptor.classifier_for(spec.name).architecture for spec in manifest.modalities}
    except KeyError as error:
        raise ClassifierError(f"no coherence classifier for the shards at {manifest.split_dir}: {error.args[0]}") from None
    return ClassifierBank({
        spec.name: build_classifier(architectures[spec.name], spec, len(manifest.label_names))
        for spec in manifest.modalities
    })


def _train_loop(loop_config: dict[str, Any]) -> None:
    from data_pipelines.readers import EvalReader, TrainReader, make_loader

    settings = ClassifierSettings(**loop_config["settings"])
    data_root, out_dir = Path(loop_config["data_root"]), Path(loop_config["out_dir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed + rank)

    manifest = load_manifest(data_root / "train")
    rules = dataset_descriptor(manifest.dataset).label_rules
    loss_fn = LOSSES[rules.classifier_loss]
    bank = _classifier_bank(manifest).to(device)
    model = ray.train.torch.prepare_model(bank) if world_size > 1 else bank
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    steps = max(1, manifest.num_samples // (settings.batch_size * world_size))
    reader = TrainReader(data_root / "train", batch_size=settings.batch_size, steps_per_epoch=steps, seed=settings.seed)

    test_reader = EvalReader(data_root / "test", batch_size=512)
    for epoch in range(1, settings.max_epochs + 1):
        reader.set_epoch(epoch)
        model.train()
        for batch in make_loader(reader, settings.loader_workers):
            labels = batch.labels.to(device)
            logits = model({name: x.to(device) for name, x in batch.inputs.items()})
            loss = sum(loss_fn(value, labels) for value in logits.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # Every rank computes the score from the same gathered logits, so every rank decides alike.
        scores = test_scores(bank, test_reader, device, rules.classifier_score)
        passed = not weak_modalities(scores, settings.min_score)
        if rank == 0:
            # A log record, not print(): Train V2 tees a worker's print() into its logger, and
            # the driver would show every progress line twice.
            logger.info(progress_line(epoch, settings, rules.classifier_score, scores))
        if passed and epoch >= settings.min_epochs:
            break
    if rank == 0:
        save_classifiers(bank, manifest, rules.classifier_score, scores, settings, out_dir, epochs_trained=epoch)
    ray.train.report({f"{rules.classifier_score}/{name}": value for name, value in scores.items()})



@torch.no_grad()
def test_scores(bank: ClassifierBank, reader, device, score_name: str) -> dict[str, float]:
    """The exact test score of every modality's classifier: each rank classifies its part of the
    test split, then the logits and labels of all ranks are gathered (one collective)."""
    from data_pipelines.readers import make_loader

    bank.eval()
    names = sorted(bank.keys())
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels: list[torch.Tensor] = []
    for batch in make_loader(reader, 0):
        outputs = bank({name: batch.inputs[name].to(device) for name in names})
        for name in names:
            logits[name].append(outputs[name].float().cpu())
        labels.append(batch.labels)
    local = ({name: torch.cat(values) if values else torch.zeros(0) for name, values in logits.items()},
             torch.cat(labels) if labels else torch.zeros(0))
    gathered = all_gather_objects(local)
    all_labels = torch.cat([part[1] for part in gathered]).numpy()
    score = SCORES[score_name]
    return {name: score(torch.cat([part[0][name] for part in gathered]).numpy(), all_labels) for name in names}


def save_classifiers(
    bank, manifest: Manifest, score_name: str, scores: dict[str, float], settings: ClassifierSettings, out_dir: Path,
    epochs_trained: int,
) -> None:
    """Write weights and metrics atomically: a reader sees both or neither."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".classifiers-", dir=out_dir.parent))
    torch.save({name: module.state_dict() for name, module in bank.items()}, staging / WEIGHTS_FILE)
    metrics = {
        "dataset": manifest.dataset,
        "label_names": list(manifest.label_names),
        "modalities": [spec.to_json() for spec in manifest.modalities],
        "score": score_name,
        "test_score": scores,
        "epochs_trained": epochs_trained,
        "training": settings.__dict__,
    }
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def train_classifiers(data_root: Path, out_dir: Path, settings: ClassifierSettings) -> dict[str, float]:
    """Train until every modality passes ``settings.min_score`` or ``max_epochs`` is reached.

    Returns the stored test scores; raises ``ClassifierError`` (after storing the classifiers)
    when the cap was reached with a modality still below the gate.
    """
    from ray.train.torch import TorchTrainer

    from mmplatform import paths

    manifest = load_manifest(Path(data_root) / "train")
    if not LABEL_KINDS[manifest.label_kind].has_labels:
        raise ClassifierError(f"coherence classifiers learn the labels, and the {manifest.dataset} shards at "
                              f"{data_root} were built without labels")
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"settings": settings.__dict__, "data_root": str(data_root), "out_dir": str(out_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers, use_gpu=False),
        run_config=ray.train.RunConfig(
            name=f"classifiers-{Path(data_root).name}", storage_path=str(paths.results_dir())
        ),
    )
    trainer.fit()
    # Rank 0 wrote the classifiers with their score; that file is the record, not Ray's result.
    score_name, scores = read_scores(out_dir)
    weak = weak_modalities(scores, settings.min_score)
    if weak:
        name, value = min(weak.items(), key=lambda item: item[1])
        raise ClassifierError(
            f"coherence classifier for {name} reached test {score_name} {value:.3f} < {settings.min_score:g} "
            f"after {settings.max_epochs} epochs (the cap); train longer with: "
            f"{train_more_command(data_root, out_dir, settings)}"
        )
    return scores


def load_classifiers(classifiers_dir: Path, manifest: Manifest, modalities: list[str], device="cpu") -> dict[str, nn.Module]:
    weights = torch.load(Path(classifiers_dir) / WEIGHTS_FILE, map_location=device, weights_only=True)
    bank = _classifier_bank(manifest)
    classifiers = {}
    for name in modalities:
        bank[name].load_state_dict(weights[name])
        classifiers[name] = bank[name].to(device).eval()
    return classifiers
