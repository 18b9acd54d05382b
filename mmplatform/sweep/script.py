"""The command line shared by the sweep scripts in ``sweeps/``.

``python sweeps/<study>.py [--profile local|cluster|smoke] [--source DIR] [--name NAME] ...``:
prepare the dataset's shards (generated offline where the dataset can, else built from the
official files in ``--source``) and its coherence classifiers on first use, run or continue the
ASHA sweep, print the trials table and how to look at the runs in Aim.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mmplatform import paths
from mmplatform.commands.arguments import non_negative_float, positive_int, seed
from mmplatform.config import ConfigError, build_config
from mmplatform.evaluation.metrics import needs_classifiers
from mmplatform.user_errors import UserErrorArgumentParser, first_line, report_user_errors
from mmplatform.sweep.config import SweepConfig, build_sweep_config
from mmplatform.sweep.profiles import PROFILES, Study, SweepPlan, dataset_dir
from mmplatform.sweep.report import trials_table
from mmplatform.sweep.search_space import Choice


def program(study: Study) -> str:
    return f"sweeps/{study.name}.py"


def parse_args(study: Study, argv: list[str] | None) -> argparse.Namespace:
    # Counts are checked here, not by the profiles: they read 0 as "not given" and would
    # silently run their default instead (a sweep of --num-samples 0 ran 3 trials).
    parser = UserErrorArgumentParser(prog=program(study), description=f"ASHA sweep: {study.name}")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="local",
                        help="local: embedded laptop default; cluster: thesis scale on RAY_ADDRESS; smoke: tests")
    parser.add_argument("--source", type=Path,
                        help=f"the official files of {study.dataset}, built into shards on first use: "
                             f"{study.descriptor.official_files}")
    parser.add_argument("--name", help=f"sweep name (default: {study.name}-<profile>); rerun the same name to continue it")
    parser.add_argument("--num-samples", type=positive_int, help="trials to sample")
    parser.add_argument("--aggregators", help=f"comma-separated subset of {', '.join(study.aggregators)} "
                                              "(default: the profile's choice among them; local: mopgfm)")
    parser.add_argument("--max-epochs", type=positive_int, help="epochs of a trial that ASHA never stops")
    parser.add_argument("--grace-period", type=positive_int,
                        help="epochs every trial runs before ASHA may stop it (default: the profile's)")
    parser.add_argument("--steps-per-epoch", type=positive_int,
                        help="training steps per epoch (default: the profile's)")
    parser.add_argument("--workers-per-trial", type=positive_int, help="DDP workers per trial (cluster)")
    parser.add_argument("--gpus-per-trial", type=non_negative_float,
                        help="GPUs per trial, split over its workers (cluster)")
    parser.add_argument("--max-concurrent-trials", type=positive_int, help="default: what the cluster can hold")
    parser.add_argument("--time-budget-s", type=positive_int,
                        help="wall-clock cap of the sweep in seconds (default: the profile's; local: 750)")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="fifo = plain random search")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the trials' training")
    parser.add_argument("--search-seed", type=seed, help="seed of the sampled trials (default: the profile's; local: 0, others unseeded)")
    return parser.parse_args(argv)


def sampled_aggregators(study: Study, plan: SweepPlan, args: argparse.Namespace) -> list[str]:
    """``--aggregators`` if given (each must be the study's), else those of the profile the study has
    (all of the study's when it has none of them)."""
    if args.aggregators:
        wanted = [name.strip() for name in args.aggregators.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in study.aggregators]
        if unknown or not wanted:
            raise ConfigError(f"--aggregators: {unknown or wanted} not in the study {study.name}; "
                              f"choose from {', '.join(study.aggregators)}")
        return wanted
    return [name for name in study.aggregators if name in plan.aggregators] or list(study.aggregators)


def sweep_config(study: Study, plan: SweepPlan, args: argparse.Namespace) -> SweepConfig:
    space = dict(study.search_space)
    space.update({key: spec for key, spec in plan.space_overrides.items() if key in space})
    space["model.aggregator"] = Choice(values=sampled_aggregators(study, plan, args))
    base = dict(plan.base)
    base["training"] = {**base.get("training", {}), "seed": args.seed}
    base["data"] = {**base["data"], "path": str(dataset_dir(plan))}
    if args.steps_per_epoch is not None:
        base["data"]["steps_per_epoch"] = args.steps_per_epoch
    grace_period = args.grace_period or plan.grace_period
    if grace_period > plan.max_epochs:
        raise ConfigError(f"--grace-period: {grace_period} is more than the trials' {plan.max_epochs} epochs (--max-epochs)")
    base["storage_path"] = plan.storage_path
    # Resolve every location here, in the sweep's driver: trial drivers run in Ray workers
    # whose environment must not decide where data, checkpoints and Aim runs go.
    given = dict(base.get("evaluation", {}))
    base = build_config(base).with_resolved_paths().model_dump(mode="json", exclude={"name"})
    # Metrics and objective the template leaves open stay open: each trial's config fills them from
    # the dataset for its own model family (MMVM's defaults have no log-likelihood).
    for key in ("metrics", "objective_weights"):
        base["evaluation"][key] = given.get(key)
    return build_sweep_config({
        "name": args.name or f"{study.name}-{plan.profile}",
        "base": base,
        "search_space": {key: spec.model_dump() for key, spec in space.items()},
        "num_samples": plan.num_samples,
        "scheduler": {"kind": args.scheduler, "max_epochs": plan.max_epochs,
                      "grace_period": grace_period, "reduction_factor": plan.reduction_factor},
        "driver_resources": plan.driver_resources,
        "max_concurrent_trials": plan.max_concurrent_trials,
        "search_seed": args.search_seed if args.search_seed is not None else plan.search_seed,
        "time_budget_s": args.time_budget_s or plan.time_budget_s,
    })


def prepare_dataset(plan: SweepPlan, source: Path | None) -> Path:
    """The shards of the profile's folder; built on first use from ``source`` (the official
    files) or, where the dataset can (PolyMNIST), generated offline."""
    from data_pipelines.datasets import build_dataset
    from data_pipelines.manifest import ManifestError, load_manifest

    root = dataset_dir(plan)
    name = plan.dataset.name
    try:
        load_manifest(root / "train")
        load_manifest(root / "test")
        return root
    except (ManifestError, FileNotFoundError):
        pass
    if source is not None:
        print(f"building {name} shards at {root} from {source} (first use)", flush=True)
        try:
            build_dataset(plan.dataset, root, source)
        except (ValueError, OSError) as error:
            # The builders name the offending file, line or field, as `mmplatform data` reports them.
            raise ConfigError(f"--source: {first_line(error)}") from None
    elif plan.data.build_offline is not None:
        print(f"building {name} shards at {root} (first use)", flush=True)
        plan.data.build_offline(root)
    else:
        raise ConfigError(
            f"no {name} shards at {root}: pass --source DIR with {plan.dataset.official_files}, or build them "
            f"first (`mmplatform data {name} --source DIR --out {root}`, or the k8s build job)"
        )
    return root


def prepare_classifiers(plan: SweepPlan, root: Path, modalities: list[str], min_score: float) -> None:
    """Train the coherence classifiers until they pass the trials' gate, unless stored ones do."""
    from mmplatform.coherence_classifiers import ClassifierError, ClassifierSettings, check_scores, train_classifiers

    directory = root / paths.CLASSIFIERS_SUBDIR
    try:
        check_scores(directory, modalities, min_score)
        return
    except ClassifierError:
        pass
    score = plan.dataset.label_rules.classifier_score
    print(f"training coherence classifiers at {directory} until every modality reaches test {score} "
          f"{min_score:g} (at most {plan.classifier_max_epochs} epochs)", flush=True)
    train_classifiers(root, directory, ClassifierSettings(max_epochs=plan.classifier_max_epochs, min_score=min_score))


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


def ending(summary: dict[str, Any], config: SweepConfig, storage_path: str, aim_repo: str, wall_s: float) -> str:
    """What the user reads when the sweep is over: the trials table, where the details are, Aim."""
    statuses = Counter(trial["status"] for trial in summary["trials"])
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    lines = [
        f"sweep {config.name}: {summary['num_trials']} trials ({counts}) in {wall_s / 60:.1f} min",
        "",
        trials_table(summary["trials"], list(config.search_space)),
        "",
    ]
    if config.time_budget_s and summary["trials"] and all(t["status"] == "no_result" for t in summary["trials"]):
        # What a newcomer sees on a busy or slow machine: say why the table is empty and what to do.
        load = os.getloadavg()[0]
        lines.append(f"no trial finished an epoch within the sweep's time budget of {config.time_budget_s:.0f} s: this "
                     f"machine is slower or busier than the budget assumes (load average {load:.1f} on "
                     f"{os.cpu_count()} cores); rerun with --time-budget-s {2 * config.time_budget_s:.0f}")
    if summary.get("best_trial_file"):
        lines.append(f"best trial (config, all metrics, checkpoint): {summary['best_trial_file']}")
    else:
        lines.append(f"results in {storage_path}/{config.name}")
    lines.append(aim_hint(aim_repo))
    return "\n".join(lines)


def main(study: Study, argv: list[str] | None = None) -> dict[str, Any]:
    """The sweep scripts' entry point; a user error ends in one line and exit status 2."""
    with report_user_errors(program(study)):
        return _main(study, argv)


def _main(study: Study, argv: list[str] | None) -> dict[str, Any]:
    from mmplatform.sweep.runner import run_sweep
    from mmplatform.training.launcher import check_config_fits_dataset

    started = time.monotonic()
    args = parse_args(study, argv)
    plan = PROFILES[args.profile](study, args)
    config = sweep_config(study, plan, args)
    template = config.validate_trials()
    root = prepare_dataset(plan, args.source)
    # Before Ray starts and the classifiers train for minutes: a config the dataset cannot take fails now.
    check_config_fits_dataset(template.model_copy(update={"data": template.data.model_copy(update={"path": root})}))
    resources = cluster_resources()
    if needs_classifiers(template.evaluation.metrics):
        from data_pipelines.manifest import load_manifest

        modalities = template.data.modalities or list(load_manifest(root / "train").modality_names)
        prepare_classifiers(plan, root, modalities, template.evaluation.min_classifier_score)
    summary = run_sweep(config, plan.storage_path, resources)
    print(ending(summary, config, plan.storage_path, template.tracking.resolved_repo(), time.monotonic() - started))
    if os.environ.get("MMPLATFORM_SWEEP_SUMMARY"):
        Path(os.environ["MMPLATFORM_SWEEP_SUMMARY"]).write_text(json.dumps(summary, default=str))
    return summary
