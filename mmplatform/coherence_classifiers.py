"""Coherence classifiers: one per modality, trained on the shards by the platform itself.

Coherence (and the default PRD features) are only as trustworthy as these classifiers, so
they are stored together with their measured test accuracy (``classifiers.json``) and a
training refuses to evaluate with classifiers whose accuracy is unknown or below
``evaluation.min_classifier_accuracy``. Training runs on Ray Train like the VAEs: DDP over
all modalities' classifiers at once, the exact test accuracy from one all-reduce.

Training is gated, not fixed-length: after every epoch the test accuracy of every modality is
measured and shown, and training stops as soon as all of them pass ``min_accuracy`` (or at
``max_epochs``). A run that hits the cap still stores what it trained, with its accuracy, and
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
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from data_pipelines.manifest import Manifest, load_manifest
from mmplatform.classifier_gate import (  # noqa: F401  (re-exported: the gate is part of this API)
    DEFAULT_MAX_EPOCHS,
    METRICS_FILE,
    ClassifierError,
    ClassifierSettings,
    check_accuracy,
    progress_line,
    read_accuracy,
    train_more_command,
    weak_modalities,
)
from models.classifiers import build_classifier

WEIGHTS_FILE = "classifiers.pt"

logger = logging.getLogger(__name__)


class ClassifierBank(nn.ModuleDict):
    """One classifier per modality with a single forward, so DDP can wrap them together."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self[name](x) for name, x in inputs.items()}


CLASSIFIER_BY_DATASET = {"polymnist": "polymnist_digit"}
"""Which registered classifier (``models.classifiers``) judges each dataset's modalities."""


def _classifier_bank(manifest: Manifest) -> ClassifierBank:
    if manifest.dataset not in CLASSIFIER_BY_DATASET:
        raise ClassifierError(
            f"no coherence classifier registered for dataset {manifest.dataset!r}; "
            f"known: {sorted(CLASSIFIER_BY_DATASET)}"
        )
    name = CLASSIFIER_BY_DATASET[manifest.dataset]
    return ClassifierBank({
        spec.name: build_classifier(name, spec, len(manifest.label_names))
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
            loss = sum(F.cross_entropy(value, labels) for value in logits.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # Every rank measures (one all-reduce) and so every rank takes the same decision.
        accuracy = test_accuracy(bank, test_reader, device)
        passed = not weak_modalities(accuracy, settings.min_accuracy)
        if rank == 0:
            # A log record, not print(): Train V2 tees a worker's print() into its logger, and
            # the driver would show every progress line twice.
            logger.info(progress_line(epoch, settings, accuracy))
        if passed and epoch >= settings.min_epochs:
            break
    if rank == 0:
        save_classifiers(bank, manifest, accuracy, settings, out_dir, epochs_trained=epoch)
    ray.train.report({f"accuracy/{name}": value for name, value in accuracy.items()})



@torch.no_grad()
def test_accuracy(bank: ClassifierBank, reader, device) -> dict[str, float]:
    """Exact accuracy over the whole test split: rank-sharded counts, one all-reduce."""
    from data_pipelines.readers import make_loader

    bank.eval()
    names = sorted(bank.keys())
    counts = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    for batch in make_loader(reader, 0):
        labels = batch.labels.to(device)
        logits = bank({name: batch.inputs[name].to(device) for name in names})
        for index, name in enumerate(names):
            counts[index] += (logits[name].argmax(-1) == labels).sum()
        counts[-1] += labels.numel()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    total = max(counts[-1].item(), 1.0)
    return {name: counts[index].item() / total for index, name in enumerate(names)}


def save_classifiers(
    bank, manifest: Manifest, accuracy, settings: ClassifierSettings, out_dir: Path, epochs_trained: int
) -> None:
    """Write weights and metrics atomically: a reader sees both or neither."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".classifiers-", dir=out_dir.parent))
    torch.save({name: module.state_dict() for name, module in bank.items()}, staging / WEIGHTS_FILE)
    metrics = {
        "dataset": manifest.dataset,
        "label_names": list(manifest.label_names),
        "modalities": [spec.to_json() for spec in manifest.modalities],
        "test_accuracy": accuracy,
        "epochs_trained": epochs_trained,
        "training": settings.__dict__,
    }
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def train_classifiers(data_root: Path, out_dir: Path, settings: ClassifierSettings) -> dict[str, float]:
    """Train until every modality passes ``settings.min_accuracy`` or ``max_epochs`` is reached.

    Returns the stored test accuracy; raises ``ClassifierError`` (after storing the classifiers)
    when the cap was reached with a modality still below the gate.
    """
    from ray.train.torch import TorchTrainer

    from mmplatform import paths

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"settings": settings.__dict__, "data_root": str(data_root), "out_dir": str(out_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers, use_gpu=False),
        run_config=ray.train.RunConfig(
            name=f"classifiers-{Path(data_root).name}", storage_path=str(paths.results_dir())
        ),
    )
    trainer.fit()
    # Rank 0 wrote the classifiers with their accuracy; that file is the record, not Ray's result.
    accuracy = read_accuracy(out_dir)
    weak = weak_modalities(accuracy, settings.min_accuracy)
    if weak:
        name, value = min(weak.items(), key=lambda item: item[1])
        raise ClassifierError(
            f"coherence classifier for {name} reached test accuracy {value:.3f} < {settings.min_accuracy:g} "
            f"after {settings.max_epochs} epochs (the cap); train longer with: "
            f"{train_more_command(data_root, out_dir, settings)}"
        )
    return accuracy


def load_classifiers(classifiers_dir: Path, manifest: Manifest, modalities: list[str], device="cpu") -> dict[str, nn.Module]:
    weights = torch.load(Path(classifiers_dir) / WEIGHTS_FILE, map_location=device, weights_only=True)
    bank = _classifier_bank(manifest)
    classifiers = {}
    for name in modalities:
        bank[name].load_state_dict(weights[name])
        classifiers[name] = bank[name].to(device).eval()
    return classifiers
