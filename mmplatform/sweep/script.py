"""The command line shared by the sweep scripts in ``sweeps/``.

``python sweeps/polymnist_fmean.py [--profile local|cluster|smoke] [--name NAME] ...``:
prepare the dataset and its coherence classifiers on first use (local and smoke), run or
continue the ASHA sweep, print the best trial and how to look at the runs in Aim.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mmplatform import paths
from mmplatform.config import build_config
from mmplatform.sweep.config import SweepConfig, build_sweep_config
from mmplatform.sweep.profiles import PROFILES, Study, SweepPlan, dataset_dir
from mmplatform.sweep.search_space import Choice


def parse_args(study: Study, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"ASHA sweep: {study.name}")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="local",
                        help="local: embedded laptop default; cluster: thesis scale on RAY_ADDRESS; smoke: tests")
    parser.add_argument("--name", help=f"sweep name (default: {study.name}-<profile>); rerun the same name to continue it")
    parser.add_argument("--num-samples", type=int, help="trials to sample")
    parser.add_argument("--max-epochs", type=int, help="epochs of a trial that ASHA never stops")
    parser.add_argument("--workers-per-trial", type=int, help="DDP workers per trial (cluster)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, split over its workers (cluster)")
    parser.add_argument("--max-concurrent-trials", type=int, help="default: what the cluster can hold")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="fifo = plain random search")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials' training")
    parser.add_argument("--search-seed", type=int, help="seed of the sampled trials (default: unseeded)")
    return parser.parse_args(argv)


def sweep_config(study: Study, plan: SweepPlan, args: argparse.Namespace) -> SweepConfig:
    space = dict(study.search_space)
    space.update({key: spec for key, spec in plan.space_overrides.items() if key in space})
    space["model.aggregator"] = Choice(values=list(study.aggregators))
    base = dict(plan.base)
    base["training"] = {**base.get("training", {}), "seed": args.seed}
    base["data"] = {**base["data"], "path": str(dataset_dir(plan))}
    base["storage_path"] = plan.storage_path
    # Resolve every location here, in the sweep's driver: trial drivers run in Ray workers
    # whose environment must not decide where data, checkpoints and Aim runs go.
    base = build_config(base).with_resolved_paths().model_dump(mode="json", exclude={"name"})
    return build_sweep_config({
        "name": args.name or f"{study.name}-{plan.profile}",
        "base": base,
        "search_space": {key: spec.model_dump() for key, spec in space.items()},
        "num_samples": plan.num_samples,
        "scheduler": {"kind": args.scheduler, "max_epochs": plan.max_epochs,
                      "grace_period": plan.grace_period, "reduction_factor": plan.reduction_factor},
        "driver_resources": plan.driver_resources,
        "max_concurrent_trials": plan.max_concurrent_trials,
        "search_seed": args.search_seed,
    })


def prepare_dataset(plan: SweepPlan) -> Path:
    """Build the shards on first use where the profile allows it, then the classifiers."""
    from data_pipelines.manifest import ManifestError, load_manifest
    from data_pipelines.polymnist import build_polymnist

    root = dataset_dir(plan)
    try:
        load_manifest(root / "train")
        load_manifest(root / "test")
    except (ManifestError, FileNotFoundError):
        if not plan.dataset.build_if_missing:
            raise SystemExit(
                f"no PolyMNIST shards at {root}: build them first (k8s/jobs build job, or "
                f"`mmplatform data polymnist --out {root}`)"
            ) from None
        print(f"building PolyMNIST shards at {root} (first use)")
        build_polymnist(root, modalities=plan.dataset.num_modalities, digits=plan.dataset.digits, seed=0)
    return root


def prepare_classifiers(plan: SweepPlan, root: Path, modalities: list[str], min_accuracy: float) -> None:
    from mmplatform.coherence_classifiers import ClassifierError, ClassifierSettings, check_accuracy, train_classifiers
    from mmplatform.commands.classifiers import DEFAULT_SUBDIR

    directory = root / DEFAULT_SUBDIR
    try:
        check_accuracy(directory, modalities, min_accuracy)
        return
    except ClassifierError:
        pass
    print(f"training coherence classifiers at {directory} (first use)")
    train_classifiers(root, directory, ClassifierSettings(epochs=plan.classifier_epochs))


def cluster_resources() -> dict[str, float]:
    from mmplatform.ray_runtime import ensure_ray

    resources = dict(ensure_ray())
    max_gpus = paths.cluster_max_gpus()
    if max_gpus is not None:  # an autoscaled GPU group shows no GPUs while idle
        resources["GPU"] = max(resources.get("GPU", 0.0), max_gpus)
    return resources


def aim_hint(repo: str) -> str:
    if repo.startswith("aim://"):
        return "open the Aim UI of the cluster: kubectl -n mmplatform port-forward svc/mmplatform-aim 43800:43800"
    return f"open the Aim UI with: .venv/bin/aim up --repo {repo}   (then http://127.0.0.1:43800)"


def main(study: Study, argv: list[str] | None = None) -> dict[str, Any]:
    from mmplatform.sweep.runner import run_sweep

    args = parse_args(study, argv)
    plan = PROFILES[args.profile](study, args)
    config = sweep_config(study, plan, args)
    template = config.validate_trials()
    resources = cluster_resources()
    root = prepare_dataset(plan)
    if {"coherence", "prd"} & set(template.evaluation.metrics):
        prepare_classifiers(plan, root, list(study.modalities), template.evaluation.min_classifier_accuracy)
    summary = run_sweep(config, plan.storage_path, resources)
    print(json.dumps(summary["best"], indent=2, default=str))
    print(f"sweep {config.name}: {summary['num_trials']} trials; results in {plan.storage_path}/{config.name}")
    print(aim_hint(template.tracking.resolved_repo()))
    if os.environ.get("MMPLATFORM_SWEEP_SUMMARY"):
        Path(os.environ["MMPLATFORM_SWEEP_SUMMARY"]).write_text(json.dumps(summary, default=str))
    return summary
