"""Where and at what scale a sweep script runs: ``local`` (default), ``cluster``, ``smoke``.

A study (``sweeps/*.py``) says *what* is searched and on which dataset; a profile says *how
big*: the trial template, ASHA's budget, the resources of a trial, and where results and Aim
runs go. What a profile trains on of the dataset (its folder, modalities, networks, latent size,
metrics, whether the shards can be built offline) comes from the dataset's descriptor
(``data_pipelines.datasets.ProfileDefaults``). Profiles are registered by name, so a new one is
one function.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from data_pipelines.datasets import DatasetDescriptor, ProfileDefaults, dataset_descriptor
from mmplatform import paths
from mmplatform.classifier_gate import DEFAULT_MAX_EPOCHS
from mmplatform.config import merge
from mmplatform.paths import TRIAL_DRIVER_RESOURCE
from mmplatform.sweep.search_space import Choice, LogUniform, ParamSpec, Uniform
LOCAL_AGGREGATORS = ("mopgfm",)
"""What ``make run`` samples of a study's aggregators (all of them if the study has none of these).
Measured in this profile on 2 cores: mogfm_amortized and iwmogfm decode a sample of every subset's
posterior, not one per tuple (209 s for one epoch of mogfm_amortized against about 90 s for
mopgfm, read from the trials' ``time_this_iter_s`` in two local sweeps); mofop learned more slowly than mopgfm in the same 1,200 steps (latent accuracy 0.46-0.48
and missing coherence 0.10-0.17, against 0.68 and 0.25). The cluster profile searches all four;
``--aggregators`` picks any of them locally."""
LOCAL_TRIALS = 3
LOCAL_MAX_EPOCHS = 6
LOCAL_STEPS_PER_EPOCH = 200
"""6 x 200 steps: where the best trial passed a latent accuracy of 0.5 (epoch 3-4) and a
missing-modality coherence of 0.2 (epoch 6) when this profile was measured."""
LOCAL_SWEEP_BUDGET_S = 750
"""A hard cap, so that ``make run`` ends within about 15 minutes (with the data and classifiers
prepared first) on a machine slower than the 2 cores it was sized on; a trial then ends where it is."""


@dataclass(frozen=True)
class Study:
    """What a sweep script searches (the thesis's studies, seed 000 sections 5.4 and 6.1)."""

    name: str
    dataset: str
    """A registered dataset (``data_pipelines.datasets``)."""
    aggregators: tuple[str, ...]
    search_space: dict[str, ParamSpec]
    evaluation: dict[str, Any] | None = None
    """Evaluation settings the study needs whatever the profile and dataset say (applied last): a
    study of several model families evaluates and ranks them by what all of them produce."""

    @property
    def descriptor(self) -> DatasetDescriptor:
        return dataset_descriptor(self.dataset)


@dataclass(frozen=True)
class SweepPlan:
    """Everything a profile decides; ``mmplatform.sweep.script`` turns it into a SweepConfig."""

    profile: str
    dataset: DatasetDescriptor
    data: ProfileDefaults
    """What this profile trains on of the dataset (its descriptor's entry for the profile)."""
    base: dict[str, Any]
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    classifier_max_epochs: int
    """Cap of the coherence classifiers' gated training (they train until they pass the gate)."""
    driver_resources: dict[str, float]
    storage_path: str
    space_overrides: dict[str, ParamSpec] = field(default_factory=dict)
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    """Wall-clock cap of the sweep (``SweepConfig.time_budget_s``)."""
    search_seed: int | None = None
    """Default seed of the sampled trials (``--search-seed`` overrides)."""
    aggregators: tuple[str, ...] = ()
    """The study's aggregators this profile samples, if the study has any of them; empty: all."""


ProfileBuilder = Callable[[Study, argparse.Namespace], SweepPlan]
PROFILES: dict[str, ProfileBuilder] = {}


def register_profile(name: str) -> Callable[[ProfileBuilder], ProfileBuilder]:
    def decorator(builder: ProfileBuilder) -> ProfileBuilder:
        PROFILES[name] = builder
        return builder

    return decorator


def _template(study: Study, dataset_profile: ProfileDefaults, /, **sections: dict[str, Any]) -> dict[str, Any]:
    """The trial template: the profile's sections, then the dataset's for this profile on top."""
    base: dict[str, Any] = {
        "data": {"dataset": study.dataset},
        "model": {"aggregator": study.aggregators[0]},
        "evaluation": {"every_n_epochs": 1},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    base = merge(base, dataset_profile.config)
    if study.evaluation is not None:
        base["evaluation"] = {**base.get("evaluation", {}), **study.evaluation}
    return base


_PARAM_SPEC = TypeAdapter(ParamSpec)


def _space(data: ProfileDefaults, **profile_space: ParamSpec) -> dict[str, ParamSpec]:
    """The profile's search-space overrides, then the dataset's (plain specs in its descriptor)."""
    return {**profile_space, **{key: _PARAM_SPEC.validate_python(dict(spec)) for key, spec in data.space.items()}}


@register_profile("local")
def local_profile(study: Study, args: argparse.Namespace) -> SweepPlan:
    """The embedded default (``make run``): a laptop with no cluster, at most 15 minutes on 2 cores,
    sized so that the best trial visibly learns (README, "What make run shows").

    Every choice is recorded in the trials' Aim hparams. The dataset's descriptor says what this
    profile trains on (PolyMNIST: PolyMNIST-3, latent 512, and two registered options that depart
    from the papers' setting, a Gaussian likelihood and conv mu/logvar heads; its descriptor says
    why). The profile itself departs twice more:

    - a small flow (1 flow of 2-4 coupling layers, width 64-128) instead of Table 5.1's sizes,
      so that the flows cost little next to the networks;
    - of the study's aggregators, mopgfm only (``LOCAL_AGGREGATORS`` says why).

    The rest is the papers': batch 128, Adam. Fewer, longer trials than on a cluster: a trial
    must train long enough for the latent to carry the labels at all, and ASHA pays an
    evaluation per rung. Trials run one at a time with 2 torch threads each.
    """
    data = study.descriptor.profile("local")
    return SweepPlan(
        profile="local",
        dataset=study.descriptor,
        data=data,
        base=_template(
            study, data,
            data={"batch_size": 128, "steps_per_epoch": LOCAL_STEPS_PER_EPOCH, "loader_workers": 1},
            training={"learning_rate": 1e-3},
            evaluation={"sample_limit": 500, "probe_train_samples": 1000, "random_coherence_samples": 200,
                        "prd_runs": 3},
            scaling={"num_workers": 1, "cpus_per_worker": 2.0},
        ),
        num_samples=args.num_samples or LOCAL_TRIALS,
        max_epochs=args.max_epochs or LOCAL_MAX_EPOCHS,
        grace_period=1,
        reduction_factor=2.0,
        classifier_max_epochs=data.classifier_max_epochs or DEFAULT_MAX_EPOCHS,
        driver_resources={"CPU": 1.0},
        storage_path=str(paths.results_dir()),
        aggregators=LOCAL_AGGREGATORS,
        time_budget_s=LOCAL_SWEEP_BUDGET_S,
        search_seed=0,  # make run draws the same trials every time
        # One trial at a time on both cores: two at once on 2 cores only split them, and ASHA's
        # first trial at a rung continues anyway; later trials are stopped when they fall behind.
        max_concurrent_trials=args.max_concurrent_trials or 1,
        space_overrides=_space(
            data,
            **{"model.beta": Uniform(low=2.0, high=4.0),
               "training.learning_rate": LogUniform(low=1.5e-3, high=2e-3),
               "model.aggregator_options.num_flows": Choice(values=[1]),
               "model.aggregator_options.coupling_layers": Choice(values=[2, 4]),
               "model.aggregator_options.coupling_width": Choice(values=[64, 128])},
        ),
    )


@register_profile("smoke")
def smoke_profile(study: Study, args: argparse.Namespace) -> SweepPlan:
    """Seconds per trial: a tiny dataset and tiny networks, for tests."""
    data = study.descriptor.profile("smoke")
    return SweepPlan(
        profile="smoke",
        dataset=study.descriptor,
        data=data,
        base=_template(
            study, data,
            data={"batch_size": 16, "steps_per_epoch": 2, "loader_workers": 0, "eval_batch_size": 64},
            # At seconds scale coherence and PRD sit at chance for every trial, so ASHA could
            # not tell trials apart; the smoke profile ranks them by log-likelihood instead.
            evaluation={"sample_limit": 64, "random_coherence_samples": 16, "log_likelihood_samples": 2,
                        "probe_train_samples": 64, "min_classifier_score": 0.0,
                        "objective_weights": {"log_likelihood": 1.0}},
            scaling={"num_workers": 1},
        ),
        num_samples=args.num_samples or 3,
        max_epochs=args.max_epochs or 3,
        grace_period=1,
        reduction_factor=3.0,
        classifier_max_epochs=data.classifier_max_epochs or 1,
        driver_resources={"CPU": 1.0},
        storage_path=str(paths.results_dir()),
        space_overrides=_space(
            data,
            **{"model.aggregator_options.num_flows": Choice(values=[1]),
               "model.aggregator_options.coupling_width": Choice(values=[16]),
               "model.aggregator_options.coupling_layers": Choice(values=[1])},
        ),
    )


@register_profile("cluster")
def cluster_profile(study: Study, args: argparse.Namespace) -> SweepPlan:
    """The thesis's scale on a Ray cluster: the full dataset, up to 500 epochs, DDP trials on GPUs.

    Shards, results and the Aim repo come from the environment the k8s manifests set
    (``mmplatform.paths``); the shards are built beforehand by the build job.
    """
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else 1.0
    workers = args.workers_per_trial or 1
    data = study.descriptor.profile("cluster")
    return SweepPlan(
        profile="cluster",
        dataset=study.descriptor,
        data=data,
        base=_template(
            study, data,
            data={"batch_size": 256, "loader_workers": 4},
            evaluation={"sample_limit": 2000, "every_n_epochs": 5},
            scaling={"num_workers": workers, "use_gpu": gpus > 0,
                     "gpus_per_worker": gpus / workers if gpus > 0 else 0.0, "cpus_per_worker": 4.0},
            tracking={"repo": paths.aim_repo()},
        ),
        num_samples=args.num_samples or 64,
        max_epochs=args.max_epochs or 500,
        grace_period=25,
        reduction_factor=3.0,
        classifier_max_epochs=data.classifier_max_epochs or DEFAULT_MAX_EPOCHS,
        # Drivers hold only the custom resource of the CPU group: never a GPU node.
        driver_resources={"CPU": 0.0, TRIAL_DRIVER_RESOURCE: 1.0},
        storage_path=str(paths.results_dir()),
        max_concurrent_trials=args.max_concurrent_trials,
        space_overrides=_space(data),
    )


def dataset_dir(plan: SweepPlan) -> Path:
    return paths.dataset_dir(plan.data.folder)
