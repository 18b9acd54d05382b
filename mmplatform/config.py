"""Typed, validated configuration of one training (and the base of a sweep's trials).

Sections: ``data``, ``model``, ``training``, ``evaluation``, ``scaling``, ``tracking``.
A config comes from a YAML file plus ``section.field=value`` overrides from the command
line. Everything that can be checked without Ray is checked here, before any Ray resource
is requested: value ranges by pydantic, the aggregator name against the model registry,
and (``check_against_dataset`` / ``check_against_cluster``) the modalities against the
shard manifest and the worker count against the cluster. Every failure is a
``ConfigError`` whose message names the field and the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_pipelines.datasets import DEFAULT_DATASET
from mmplatform import paths


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = DEFAULT_DATASET
    """A registered dataset (``data_pipelines.datasets``); its descriptor supplies the defaults
    of the networks, classifiers and metrics."""
    path: Path | None = None
    """Dataset root holding ``train/`` and ``test/`` shard folders; default
    ``$MMPLATFORM_DATASETS_DIR/<dataset>``."""
    modalities: list[str] | None = None
    """Modalities to train on (default: all in the manifest)."""
    batch_size: int = Field(256, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    """Batches per rank per epoch; default: the training split once over all ranks."""
    loader_workers: int = Field(2, ge=0)
    eval_batch_size: int = Field(512, ge=1)

    def root(self) -> Path:
        return Path(self.path) if self.path is not None else paths.dataset_dir(self.dataset)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from data_pipelines.datasets import registered_datasets

        if name not in registered_datasets():
            raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(registered_datasets()))}")
        return name


class LikelihoodChoice(_Section):
    """A decoder likelihood that replaces the one the dataset's manifest names for a modality."""

    kind: str | None = None
    """Registered likelihood (``laplace``, ``gaussian``, ...); ``None`` keeps the manifest's."""
    scale: float | None = Field(None, gt=0.0)
    """Fixed scale of a ``laplace`` or ``gaussian`` likelihood; ``None`` keeps its default."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, name: str | None) -> str | None:
        from models.likelihoods import LIKELIHOODS

        if name is not None and name not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {name!r}; registered: {', '.join(sorted(LIKELIHOODS))}")
        return name


ALL_MODALITIES = "*"


def per_modality(choices: Mapping[str, Any], modality: str) -> tuple[str, Any] | None:
    """``(key, choice)`` that applies to ``modality``: its own entry, else the ``"*"`` entry, else None."""
    for key in (modality, ALL_MODALITIES):
        if key in choices:
            return key, choices[key]
    return None


class ModelConfig(_Section):
    family: str = "aggregator"
    """The model family (``models.families``): ``aggregator`` (one shared latent fused by
    ``aggregator``), ``mmvm``, ``jnf`` or ``jnf_dcca``. It owns the objective, the training stages
    and what evaluation can ask of the model."""
    family_options: dict[str, Any] = Field(default_factory=dict)
    """Options of the family, checked against its typed options (e.g. ``alpha_anneal_steps`` for
    ``mmvm``, ``joint_epochs`` and the HMC settings for ``jnf``); unknown keys fail here."""
    aggregator: str = "mopoe"
    latent_dim: int = Field(512, ge=1)
    beta: float = Field(2.5, ge=0.0)
    num_importance_samples: int = Field(1, ge=1)
    """K: 1 trains the ELBO, K > 1 the importance-weighted bound."""
    aggregator_options: dict[str, Any] = Field(default_factory=dict)
    """Options of the chosen aggregator, e.g. ``num_flows``, ``coupling_width`` for f-means; checked
    against its typed options (``models.aggregators.base.options_model``): an unknown key or a
    value of the wrong type fails here, naming the option."""
    style_latent_dim: int = Field(0, ge=0)
    """Modality-specific (style) latent per modality next to the shared one (MoPoE's CelebA
    setting: 32 shared + 32 style); 0 = none."""
    style_beta: float | dict[str, float] = 1.0
    """Whole weight of each style latent's KL divergence to N(0, I) (not multiplied by ``beta``):
    one value, or one per modality (unnamed ones get 1). MoPoE's CelebA setting is beta 2.5 times
    beta_style 2 times 1 (image) or 5 (text): ``{"image": 5.0, "text": 25.0}``."""
    likelihoods: dict[str, LikelihoodChoice] = Field(default_factory=dict)
    """Per modality, a likelihood replacing the manifest's (Laplace, scale 0.75 for images), e.g.
    ``{"m0": {"kind": "gaussian", "scale": 0.1}}``. The key ``"*"`` applies to every modality
    without an entry of its own; an entry of its own replaces ``"*"`` as a whole."""

    networks: dict[str, str] = Field(default_factory=dict)
    """Per modality, a registered encoder/decoder pair (``models.networks``) replacing the automatic
    choice (the papers' networks), e.g. ``{"*": "polymnist_conv_heads"}``; ``"*"`` as for
    ``likelihoods``."""

    @field_validator("networks")
    @classmethod
    def _known_networks(cls, choices: dict[str, str]) -> dict[str, str]:
        from models.networks import NETWORKS

        unknown = sorted({name for name in choices.values() if name not in NETWORKS})
        if unknown:
            raise ValueError(f"unknown networks {unknown}; registered: {', '.join(sorted(NETWORKS))}")
        return choices

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        from models.families import FAMILIES

        if name not in FAMILIES:
            raise ValueError(f"unknown model family {name!r}; registered: {', '.join(FAMILIES)}")
        return name

    @field_validator("family_options")
    @classmethod
    def _typed_family_options(cls, options: dict[str, Any], info) -> dict[str, Any]:
        from models.families import model_family

        family = info.data.get("family")
        if family is None:  # the family itself was refused; that error is reported
            return options
        parsed = model_family(family).parse_options(options)
        return {key: getattr(parsed, key) for key in options}

    @field_validator("aggregator")
    @classmethod
    def _known_aggregator(cls, name: str) -> str:
        from models.aggregators import AGGREGATORS  # imported late: keeps config import light

        if name not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {name!r}; registered: {', '.join(sorted(AGGREGATORS))}")
        return name

    @field_validator("aggregator_options")
    @classmethod
    def _typed_aggregator_options(cls, options: dict[str, Any], info) -> dict[str, Any]:
        """Checked against the typed options of the aggregator (a field declared above this one);
        values come back as typed, e.g. a YAML ``2`` for a float option as ``2.0``."""
        from models.aggregators.base import validate_options

        aggregator = info.data.get("aggregator")
        if aggregator is None:  # the aggregator itself was refused; that error is reported
            return options
        return validate_options(aggregator, options)


class TrainingConfig(_Section):
    epochs: int = Field(10, ge=1)
    learning_rate: float = Field(5e-4, gt=0.0)
    seed: int = Field(0, ge=0, lt=2**32)
    """Also seeds ``np.random``, which takes 0 .. 2**32 - 1 (a negative seed failed in the workers)."""
    grad_clip_norm: float | None = Field(None, gt=0.0)
    """Clip the global gradient norm to this value; ``None`` disables clipping."""
    max_bad_steps: int = Field(10, ge=1)
    """Non-finite loss/gradient steps (skipped) tolerated before the run ends as ``diverged``."""
    max_failures: int = Field(2, ge=0)
    """Ray Train restarts from the last checkpoint after a worker is lost, this many times."""
    checkpoints_to_keep: int = Field(2, ge=1)


class EvaluationConfig(_Section):
    every_n_epochs: int = Field(1, ge=1)
    sample_limit: int | None = Field(None, ge=1)
    """Evaluate on a deterministic sample of this many test tuples (sweeps); ``None`` = all."""
    metrics: list[str] | None = None
    """Registered metrics (``mmplatform.evaluation.metrics``); default: the dataset's."""
    probe_train_samples: int = Field(1000, ge=2)
    probe_model: Literal["logistic_regression", "random_forest"] = "logistic_regression"
    """The latent probe's classifier: logistic regression on posterior means (MoPoE, the thesis) or
    MMVM's random forest (its MIMIC-CXR protocol)."""
    probe_forest_trees: int = Field(5000, ge=1)
    """Trees of the random-forest probe (MMVM: 5,000)."""
    probe_forest_depth: int = Field(30, ge=1)
    """Maximum depth of its trees (MMVM: 30)."""
    random_coherence_samples: int = Field(1000, ge=1)
    log_likelihood_samples: int = Field(12, ge=1)
    prd_samples: int = Field(10000, ge=1)
    """Real and generated samples per PRD pair (MoPoE: 10,000); at most ``sample_limit``."""
    prd_clusters: int = Field(20, ge=2)
    prd_angles: int = Field(1001, ge=3)
    prd_runs: int = Field(10, ge=1)
    prd_clustering: Literal["torch", "sklearn"] = "torch"
    """PRD's k-means: batched on the evaluation's device (``torch``) or scikit-learn's
    MiniBatchKMeans, the reference protocol's, one fit per pair and run on the CPU (``sklearn``)."""
    classifiers_dir: Path | None = None
    """Coherence classifiers (``mmplatform classifiers train``); default ``<dataset dir>/classifiers``."""
    min_classifier_score: float | None = Field(None, ge=0.0, le=1.0)
    """Gate on the coherence classifiers' test score (accuracy for classes, mean average
    precision for attributes); default: the dataset's label kind's."""
    objective_weights: dict[str, float] | None = None
    """The scalar ``objective`` sweeps maximize, a weighted average of metric results (their
    ``objective_key``); default: the dataset's (PolyMNIST: the thesis's weighted average of
    coherence and PRD, seed 000, section 5.4)."""
    feature_extractor_weights: Path | None = None
    """Local Inception weights for PRD features; ``None`` uses the platform's classifier."""

    @field_validator("objective_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None and (not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
            raise ValueError("must be non-negative with a positive sum")
        return weights

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from mmplatform.evaluation.metrics import METRICS, unknown_metrics

        unknown = unknown_metrics(names or [])
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; registered: {sorted(METRICS)}")
        return names


class ScalingSection(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)


class TrackingConfig(_Section):
    experiment: str = "mmplatform"
    """Aim experiment; a sweep sets its own name, so the UI groups a sweep's trials."""
    run_name: str | None = None
    """The run's name in the Aim UI; default: the training's ``name`` (a sweep sets
    ``<sweep>/<trial id> <aggregator>``)."""
    repo: str | None = None
    """Aim repo path or ``aim://host:port``; default ``$MMPLATFORM_AIM_REPO``."""
    fallback_dir: Path | None = None
    """Where metrics go while the Aim server is unreachable; default under the data root."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra flat hparams stored on the run (a sweep adds its name and the trial id)."""
    pair_breakdowns: bool = False
    """Also track coherence and PRD per (subset, modality) pair in Aim, not only their means per
    ``kind`` (the Ray Train results keep every pair either way). Off: they are most of a run's
    series, and Aim's runs page loads every series of every run (``benchmarks/aim_scale.py``)."""
    log_restricted_samples: bool = False
    """Log images and decoded text of a restricted (credentialed) dataset to Aim anyway; off, only
    its aggregate metrics are tracked (``mmplatform.privacy``)."""

    def resolved_repo(self) -> str:
        return self.repo or paths.aim_repo()

    def resolved_fallback_dir(self) -> Path:
        return Path(self.fallback_dir) if self.fallback_dir else paths.data_root() / "aim_fallback"


class TrainConfig(_Section):
    name: str = "train"
    """Ray Train run name: checkpoints live in ``<storage_path>/<name>``; rerunning the same
    name resumes from its latest checkpoint."""
    storage_path: str | None = None
    """Local directory, shared filesystem or ``s3://`` URI; default ``$MMPLATFORM_RESULTS_DIR``."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _dataset_defaults(self) -> "TrainConfig":
        """What the config leaves open, the dataset's descriptor decides (and the run records)."""
        from data_pipelines.datasets import dataset_descriptor

        descriptor = dataset_descriptor(self.data.dataset)
        evaluation = self.evaluation
        if evaluation.metrics is None:
            # The dataset's metrics, less those the model family cannot give (MMVM has no log p(X));
            # the run's ``skipped_evaluations`` says which and why. Asked for by name, they fail.
            from models.families import model_family

            refused = model_family(self.model.family).abilities.refused_metrics
            evaluation.metrics = [name for name in descriptor.metrics if name not in refused]
        if evaluation.objective_weights is None:
            produced = _objective_keys(evaluation.metrics)
            evaluation.objective_weights = {
                key: weight for key, weight in descriptor.objective_weights.items() if key in produced
            } or {produced[0]: 1.0}
        if evaluation.min_classifier_score is None:
            evaluation.min_classifier_score = descriptor.label_rules.default_min_score
        return self

    def resolved_storage_path(self) -> str:
        return self.storage_path or str(paths.results_dir())

    def with_resolved_paths(self) -> "TrainConfig":
        """A copy with every defaulted location filled in from this process's environment.

        The launcher sends this to the workers, so a worker's environment (another node, a
        Tune trial driver) can never redirect a run's data, checkpoints or Aim runs."""
        return self.model_copy(update={
            "storage_path": self.resolved_storage_path(),
            "data": self.data.model_copy(update={"path": self.data.root()}),
            "evaluation": self.evaluation.model_copy(update={"classifiers_dir": self.evaluation.classifiers_dir
                                                             or self.data.root() / paths.CLASSIFIERS_SUBDIR}),
            "tracking": self.tracking.model_copy(update={"repo": self.tracking.resolved_repo(),
                                                         "fallback_dir": self.tracking.resolved_fallback_dir()}),
        })

    def flat_hparams(self) -> dict[str, Any]:
        """Small, flat hparams for Aim, under the short names users query
        (``run.hparams.aggregator == "mopgfm" and run.hparams.beta > 1``)."""
        hparams: dict[str, Any] = {
            "dataset": self.data.dataset,
            "modalities": ",".join(self.data.modalities) if self.data.modalities else "all",
            "batch_size": self.data.batch_size,
            "steps_per_epoch": self.data.steps_per_epoch,  # None: one pass over the training split
            "family": self.model.family,
            "aggregator": self.model.aggregator,
            "latent_dim": self.model.latent_dim,
            "beta": self.model.beta,
            "num_importance_samples": self.model.num_importance_samples,
            "style_latent_dim": self.model.style_latent_dim,
            "learning_rate": self.training.learning_rate,
            "epochs": self.training.epochs,
            "seed": self.training.seed,
            "grad_clip_norm": self.training.grad_clip_norm,
            "eval_sample_limit": self.evaluation.sample_limit,  # None: the whole test split
            # e.g. "*=gaussian(0.1)"; "manifest" when every modality keeps the dataset's likelihood
            "likelihood": ",".join(
                f"{key}={choice.kind or 'manifest'}" + (f"({choice.scale:g})" if choice.scale is not None else "")
                for key, choice in sorted(self.model.likelihoods.items())
            ) or "manifest",
            # e.g. "*=polymnist_conv_heads"; "default" when every modality keeps the papers' networks
            "networks": ",".join(f"{key}={name}" for key, name in sorted(self.model.networks.items())) or "default",
            "num_workers": self.scaling.num_workers,
            "run_name": self.name,
        }
        hparams.update(
            (key, value) for key, value in {**self.model.aggregator_options, **self.model.family_options}.items()
            if isinstance(value, (str, int, float, bool))
        )
        hparams.update(self.tracking.tags)
        return hparams


def _objective_keys(metrics: Sequence[str]) -> list[str]:
    from mmplatform.evaluation.metrics import objective_keys

    return list(objective_keys(metrics))


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.beta": 1.5}`` -> ``{"model": {"beta": 1.5}}`` (dotted keys address config fields)."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key!r} conflicts with another value for {part!r}")
        node[leaf] = value
    return tree


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        got = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message} (got {got!r})" if item["type"] != "missing" else f"{field}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["model.beta=1.5", "data.modalities=[m0,m1]"]`` -> nested dict (values parsed as YAML)."""
    dotted: dict[str, Any] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form section.field=value")
        try:
            dotted[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from None
    return nest(dotted)


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(tree: Mapping[str, Any]) -> TrainConfig:
    try:
        config = TrainConfig.model_validate(dict(tree))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None
    check_family(config)
    return config


def check_family(config: TrainConfig) -> None:
    """The family must take the shared model settings (no style latents for MMVM), its stages must
    fit ``training.epochs``, and every metric must be one it can give."""
    from models.families import model_family

    family = model_family(config.model.family)
    if family.check is not None:
        try:
            family.check(config.model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        family.schedule(config.model.family_options, config.training.epochs)
    except ValueError as error:
        raise ConfigError(f"training.epochs: {error}") from None
    refused = [name for name in config.evaluation.metrics or [] if name in family.abilities.refused_metrics]
    if refused:
        reasons = family.abilities.skipped_evaluations(family.name)
        raise ConfigError(f"evaluation.metrics: {refused[0]!r} is not available: {reasons[refused[0]]}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (optional) and apply ``section.field=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:  # a directory, no permission, not text
            raise ConfigError(f"config file {path} is not readable: {error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
        tree = loaded or {}
    return build_config(merge(tree, parse_overrides(overrides)))


def check_against_dataset(config: TrainConfig, manifest: Any) -> None:
    """The config must fit the dataset's manifest: its name, its modalities (and the per-modality
    likelihoods and networks), and metrics its labels can score."""
    from mmplatform.evaluation.metrics import check_metrics

    if manifest.dataset != config.data.dataset:
        raise ConfigError(
            f"data.dataset: is {config.data.dataset!r} but the shards at {config.data.root()} hold "
            f"{manifest.dataset!r}"
        )
    try:
        check_metrics(config.evaluation.metrics, config.evaluation.objective_weights, manifest.dataset,
                      manifest.label_kind)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    modality_names = list(manifest.modality_names)
    for field_name in ("likelihoods", "networks"):
        unknown = [name for name in getattr(config.model, field_name) if name not in (*modality_names, ALL_MODALITIES)]
        if unknown:
            raise ConfigError(
                f"model.{field_name}: {unknown} not in the dataset at {config.data.root()}; "
                f"available: {list(modality_names)} or {ALL_MODALITIES!r} for all"
            )
    if config.data.modalities is None:
        return
    unknown = [name for name in config.data.modalities if name not in modality_names]
    if unknown:
        raise ConfigError(
            f"data.modalities: {unknown} not in the dataset at {config.data.root()}; "
            f"available: {list(modality_names)}"
        )
    if not config.data.modalities:
        raise ConfigError("data.modalities: must name at least one modality")


def check_against_cluster(config: TrainConfig, cluster_resources: Mapping[str, float]) -> None:
    """``scaling`` must fit the cluster (``ray.cluster_resources()``), or the run would hang pending."""
    scaling = config.scaling
    needed_cpus = scaling.num_workers * scaling.cpus_per_worker
    available_cpus = cluster_resources.get("CPU", 0.0)
    if needed_cpus > available_cpus:
        raise ConfigError(
            f"scaling.num_workers: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU "
            f"need {needed_cpus:g} CPUs; the cluster has {available_cpus:g} "
            f"(at most {int(available_cpus // scaling.cpus_per_worker)} workers)"
        )
    if scaling.use_gpu:
        needed_gpus = scaling.num_workers * scaling.gpus_per_worker
        available_gpus = cluster_resources.get("GPU", 0.0)
        if needed_gpus > available_gpus:
            raise ConfigError(
                f"scaling.num_workers: {scaling.num_workers} workers x {scaling.gpus_per_worker} GPU "
                f"need {needed_gpus:g} GPUs; the cluster has {available_gpus:g}"
            )
