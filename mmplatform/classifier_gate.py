"""The record and the gate of coherence classifiers, without torch or Ray.

Classifiers are stored with their measured test score (``classifiers.json``): accuracy for a
dataset of classes, mean average precision for one of attributes (the dataset's label kind
decides, ``data_pipelines.datasets.LABEL_KIND_RULES``). A training evaluates coherence or PRD
only with classifiers whose score passes its ``evaluation.min_classifier_score``. This module
holds what the command line, the sweep scripts and the preflight checks need to know about that
gate, so they can name it without importing the training code (``mmplatform.coherence_classifiers``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmplatform.paths import CLASSIFIERS_SUBDIR

METRICS_FILE = "classifiers.json"


class ClassifierError(RuntimeError):
    """Classifiers are missing, unmeasured or not good enough to evaluate with."""


DEFAULT_MAX_EPOCHS = 40
"""Cap of a gated training. On generated PolyMNIST-3 (4,000 train tuples) the weakest modality
passes 0.9 after about 20-25 epochs, a few seconds each on 2 cores."""


@dataclass(frozen=True)
class ClassifierSettings:
    max_epochs: int = DEFAULT_MAX_EPOCHS
    """Training stops here even if a modality is still below ``min_score``."""
    min_score: float = 0.0
    """Training stops after the first epoch at which every modality reaches this test score
    (``evaluation.min_classifier_score`` of the trainings that will use them)."""
    min_epochs: int = 1
    """Epochs trained before the gate may stop training (``min_epochs = max_epochs``: a fixed length)."""
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    num_workers: int = 1
    loader_workers: int = 1


def weak_modalities(scores: dict[str, float], min_score: float) -> dict[str, float]:
    return {name: value for name, value in scores.items() if value < min_score}


def progress_line(epoch: int, settings: ClassifierSettings, score_name: str, scores: dict[str, float]) -> str:
    values = " ".join(f"{name}={value:.3f}" for name, value in sorted(scores.items()))
    return (f"coherence classifiers epoch {epoch}/{settings.max_epochs}: test {score_name} {values} "
            f"(gate {settings.min_score:g})")


def train_more_command(data_root: Path, out_dir: Path, settings: ClassifierSettings) -> str:
    """The command that retrains with twice the cap (seeded: its first epochs are these again)."""
    command = (f"mmplatform classifiers train --data {data_root} --max-epochs {2 * settings.max_epochs} "
               f"--min-score {settings.min_score:g}")
    if Path(out_dir) != Path(data_root) / CLASSIFIERS_SUBDIR:
        command += f" --out {out_dir}"
    return command


def read_scores(classifiers_dir: Path) -> tuple[str, dict[str, float]]:
    """``(score name, test score per modality)`` as stored with the classifiers."""
    metrics_path = Path(classifiers_dir) / METRICS_FILE
    if not metrics_path.exists():
        raise ClassifierError(
            f"no coherence classifiers at {classifiers_dir} ({METRICS_FILE} missing); "
            f"train them with `mmplatform classifiers train --data {Path(classifiers_dir).parent}`"
        )
    record = json.loads(metrics_path.read_text())
    if "test_score" not in record:  # written before multi-label datasets: always accuracy
        return "accuracy", record["test_accuracy"]
    return record["score"], record["test_score"]


def check_scores(classifiers_dir: Path, modalities: list[str], min_score: float) -> dict[str, float]:
    """Refuse classifiers whose score is unknown or below ``min_score``."""
    score_name, scores = read_scores(classifiers_dir)
    missing = [name for name in modalities if name not in scores]
    if missing:
        raise ClassifierError(f"classifiers at {classifiers_dir} have no measured {score_name} for {missing}")
    weak = weak_modalities({name: scores[name] for name in modalities}, min_score)
    if weak:
        raise ClassifierError(
            f"classifiers at {classifiers_dir} are below evaluation.min_classifier_score={min_score} "
            f"(test {score_name}): " + ", ".join(f"{name}={value:.3f}" for name, value in weak.items())
            + f"; train longer with: mmplatform classifiers train --data {Path(classifiers_dir).parent} "
            f"--min-score {min_score:g}"
        )
    return scores
