"""Datasets as plug-ins: one descriptor per dataset, in one registry.

A ``DatasetDescriptor`` says everything the platform needs to know about a dataset beyond its
shards: how to build it (the CLI verb ``mmplatform data <name>`` and its arguments), what its
labels are (single-label classes or multi-label attributes), which networks and coherence
classifiers suit its modalities, which evaluation metrics apply by default, and what each sweep
profile trains on. Config checks, classifier training, evaluation, the sweep scripts and the
k8s build job read the descriptor; no module outside a dataset's own package names a dataset.

Adding a dataset is a package ``data_pipelines/<name>/`` (builder, descriptor, a writer of a
test fixture in the official layout) plus one line in ``DATASET_PACKAGES``.

This module imports neither torch nor the builders: the CLI reads descriptors to print its help.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALL_MODALITIES = "*"
"""Key of a per-modality mapping that applies to every modality without an entry of its own."""


@dataclass(frozen=True)
class ClassifierSpec:
    """The coherence classifier of a modality: what judges generated samples of it.

    ``architecture`` names a ``models.classifiers`` entry; the loss it trains with and the score
    that gates it follow from the dataset's label kind (``LABEL_KIND_RULES``)."""

    architecture: str


@dataclass(frozen=True)
class LabelKindRules:
    """How a kind of label is learnt and scored, the same for every dataset that has it."""

    classifier_loss: str
    """``mmplatform.coherence_classifiers.LOSSES`` entry the coherence classifiers train with."""
    classifier_score: str
    """``mmplatform.classifier_gate.SCORES`` entry measured on the test split and gated."""
    default_min_score: float
    """Gate of that score unless ``evaluation.min_classifier_score`` says otherwise."""


LABEL_KIND_RULES: dict[str, LabelKindRules] = {
    # Digits: MoPoE's classifiers reach 0.98+ accuracy; 0.9 leaves room for the offline data.
    "single": LabelKindRules("cross_entropy", "accuracy", 0.9),
    # Attributes: average precision per attribute, averaged (MoPoE's CelebA protocol). Some of
    # CelebA's 40 attributes are hard even for good image classifiers (e.g. Oval_Face), so the
    # gate is on the mean, at a level a classifier clearly above the attributes' base rates passes.
    "multi": LabelKindRules("binary_cross_entropy", "mean_average_precision", 0.5),
}


@dataclass(frozen=True)
class ProfileDefaults:
    """What a sweep profile (``local``, ``smoke``, ``cluster``) trains on for this dataset."""

    folder: str
    """Folder under ``$MMPLATFORM_DATASETS_DIR`` holding ``train/`` and ``test/`` shards."""
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Sections of the trial template (``data``, ``model``, ``evaluation``) this dataset sets."""
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Search-space entries replacing a study's, as plain specs (``{"type": "choice", ...}``)."""
    build_offline: Callable[[Path], None] | None = None
    """Builds the shards into a folder when they are missing, with no download and no source
    files (PolyMNIST's generator); ``None``: the user builds them from the official files."""
    classifier_max_epochs: int | None = None
    """Cap of the gated coherence-classifier training; ``None``: the platform's default."""


def join_tokens(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
    """Characters joined as they are, words with spaces."""
    tokens = [vocabulary[int(i)] for i in ids]
    return "".join(tokens) if all(len(token) == 1 for token in vocabulary) else " ".join(tokens)


@dataclass(frozen=True)
class DatasetDescriptor:
    name: str
    """Registry key, ``mmplatform data <name>``, and the ``dataset`` field of its manifests."""
    summary: str
    """One line for ``mmplatform data --help``."""
    label_kind: str
    """``single`` (one class per tuple) or ``multi`` (multi-hot attributes): a ``LABEL_KIND_RULES`` key."""
    modalities: tuple[str, ...]
    """Modality names of a default build (a build may hold fewer, e.g. PolyMNIST-3)."""
    add_build_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the dataset's own ``mmplatform data <name>`` arguments (``--source``, ``--out`` and
    ``--force`` are common to every dataset: ``add_common_build_arguments``)."""
    build_from_arguments: Callable[[argparse.Namespace, Path], None]
    """Builds ``out/train`` and ``out/test`` from the parsed arguments (``args.source``: the
    official files, or None); bad input raises ``ValueError`` naming the file and line."""
    networks: Mapping[str, str]
    """Per modality (or ``"*"``), the ``models.networks`` entry used unless ``model.networks`` says otherwise."""
    classifiers: Mapping[str, ClassifierSpec]
    """Per modality (or ``"*"``), its coherence classifier."""
    metrics: tuple[str, ...]
    """``evaluation.metrics`` unless the config names them (``mmplatform.evaluation.metrics``)."""
    objective_weights: Mapping[str, float]
    """``evaluation.objective_weights`` unless the config names them: what sweeps maximize."""
    profiles: Mapping[str, ProfileDefaults]
    official_files: str
    """Where the official files come from and what the builder reads (README, error messages)."""
    source_required: bool = True
    """Whether a build needs the official files (``--source``); PolyMNIST can generate its own."""
    decode_text: Callable[[Sequence[int], Sequence[str]], str] = join_tokens
    """Token ids -> the string shown in Aim (padding removed)."""

    @property
    def label_rules(self) -> LabelKindRules:
        return LABEL_KIND_RULES[self.label_kind]

    def classifier_for(self, modality: str) -> ClassifierSpec:
        return per_modality_value(self.classifiers, modality, f"{self.name} descriptor classifiers")

    def network_for(self, modality: str) -> str | None:
        return self.networks.get(modality, self.networks.get(ALL_MODALITIES))

    def profile(self, name: str) -> ProfileDefaults:
        if name not in self.profiles:
            raise KeyError(f"dataset {self.name!r} has no {name!r} profile; it has {sorted(self.profiles)}")
        return self.profiles[name]


def _source_path(text: str) -> Path | None:
    """An empty ``--source`` means none: the k8s build job passes its DATASET_SOURCE as it is."""
    return Path(text) if text.strip() else None


def add_common_build_arguments(parser: argparse.ArgumentParser, descriptor: DatasetDescriptor, default_out: Path) -> None:
    parser.add_argument("--source", type=_source_path, required=descriptor.source_required, default=None,
                        help=f"the official files: {descriptor.official_files}")
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"output directory (default: $MMPLATFORM_DATASETS_DIR/{descriptor.name}, i.e. {default_out})")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")


def build_dataset(descriptor: DatasetDescriptor, out: Path, source: Path | None = None) -> None:
    """Build with the defaults of ``mmplatform data <name> [--source SOURCE] --out OUT``: one code
    path for the CLI, the sweep scripts and the k8s build job."""
    parser = argparse.ArgumentParser(prog=f"mmplatform data {descriptor.name}")
    add_common_build_arguments(parser, descriptor, out)
    descriptor.add_build_arguments(parser)
    args = parser.parse_args(["--source", str(source)] if source is not None else [])
    descriptor.build_from_arguments(args, Path(args.out))


def per_modality_value(mapping: Mapping[str, Any], modality: str, what: str) -> Any:
    for key in (modality, ALL_MODALITIES):
        if key in mapping:
            return mapping[key]
    raise KeyError(f"{what}: no entry for modality {modality!r} (nor {ALL_MODALITIES!r})")


DATASET_PACKAGES = ("polymnist", "celeba", "cub", "mimic")
"""Each ``data_pipelines.<package>.descriptor`` module registers its dataset on import."""

DEFAULT_DATASET = DATASET_PACKAGES[0]
"""What a config without ``data.dataset`` trains on: the offline-buildable PolyMNIST."""

DATASETS: dict[str, DatasetDescriptor] = {}


def register_dataset(descriptor: DatasetDescriptor) -> DatasetDescriptor:
    if descriptor.name in DATASETS:
        raise ValueError(f"dataset {descriptor.name!r} registered twice")
    if descriptor.label_kind not in LABEL_KIND_RULES:
        raise ValueError(f"dataset {descriptor.name!r}: unknown label kind {descriptor.label_kind!r}")
    DATASETS[descriptor.name] = descriptor
    return descriptor


def _load_all() -> None:
    for package in DATASET_PACKAGES:
        importlib.import_module(f"data_pipelines.{package}.descriptor")


def registered_datasets() -> dict[str, DatasetDescriptor]:
    _load_all()  # cheap after the first call: imported modules are cached
    return DATASETS


def dataset_descriptor(name: str) -> DatasetDescriptor:
    datasets = registered_datasets()
    if name not in datasets:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(sorted(datasets))}")
    return datasets[name]
