"""Run (or continue) a sweep and write its best trial as JSON."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from mmplatform.config import TrainConfig, check_against_cluster
from mmplatform.ray_runtime import ensure_ray
from mmplatform.sweep.config import AGGREGATOR_KEY, SchedulerConfig, SweepConfig, applicable
from mmplatform.sweep.report import HEADLINE_METRICS
from mmplatform.sweep.search_space import to_param_space
from mmplatform.sweep.trial import run_trial
from mmplatform.tracking import create_local_repo
from mmplatform.training.launcher import preflight

logger = logging.getLogger(__name__)

METRIC, MODE = "objective", "max"
BEST_TRIAL_FILE = "best_trial.json"
# Besides its workers, a trial runs its Tune driver and a Train controller actor.
TRAIN_CONTROLLER_CPUS = 1.0

SCHEDULERS = {
    "asha": lambda cfg: ASHAScheduler(
        time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    ),
    "fifo": lambda cfg: FIFOScheduler(),
}


def build_scheduler(config: SchedulerConfig):
    return SCHEDULERS[config.kind](config)


def trial_resources(sweep: SweepConfig, trial: TrainConfig) -> dict[str, float]:
    """Everything one running trial holds: its driver, the Train controller, its workers."""
    scaling = trial.scaling
    needs = {key.upper() if key.lower() in ("cpu", "gpu") else key: value for key, value in sweep.driver_resources.items()}
    needs["CPU"] = needs.get("CPU", 0.0) + TRAIN_CONTROLLER_CPUS + scaling.num_workers * scaling.cpus_per_worker
    if scaling.use_gpu:
        needs["GPU"] = needs.get("GPU", 0.0) + scaling.num_workers * scaling.gpus_per_worker
    return needs


def derive_max_concurrent_trials(needs: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials fit at once; more would only queue as idle drivers holding CPUs."""
    fits = [math.floor(cluster.get(name, 0.0) / amount) for name, amount in needs.items() if amount > 0]
    return max(1, min(fits)) if fits else 1


def _tune_resources(resources: dict[str, float]) -> dict[str, float]:
    return {key.lower() if key in ("CPU", "GPU") else key: value for key, value in resources.items()}


def run_sweep(sweep: SweepConfig, storage_path: str, cluster_resources: dict[str, float] | None = None) -> dict[str, Any]:
    template = sweep.validate_trials()
    preflight(template)
    cluster = ensure_ray() if cluster_resources is None else cluster_resources
    check_against_cluster(template, cluster)
    max_concurrent = sweep.max_concurrent_trials or derive_max_concurrent_trials(trial_resources(sweep, template), cluster)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep_tree=sweep.model_dump(mode="json")),
        _tune_resources(sweep.driver_resources),
    )
    create_local_repo(template.tracking.resolved_repo())
    experiment_dir = f"{storage_path.rstrip('/')}/{sweep.name}"
    if tune.Tuner.can_restore(experiment_dir):
        logger.info("continuing sweep %s from %s", sweep.name, experiment_dir)
        tuner = tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(sweep.search_space),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, num_samples=sweep.num_samples, time_budget_s=sweep.time_budget_s,
                scheduler=build_scheduler(sweep.scheduler),
                # Tune ignores TuneConfig.max_concurrent_trials when a search_alg that is not a
                # Searcher is given: the generator itself must carry the limit.
                search_alg=BasicVariantGenerator(random_state=sweep.search_seed, max_concurrent=max_concurrent),
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=sweep.trial_max_failures),
            ),
        )
    results = tuner.fit()
    summary = summarize(results, sweep)
    if "://" not in storage_path:
        summary["best_trial_file"] = str(Path(experiment_dir, BEST_TRIAL_FILE))
        Path(summary["best_trial_file"]).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def trial_values(config: dict[str, Any], sweep: SweepConfig) -> dict[str, Any]:
    sampled = {key: value for key, value in config.items() if key in sweep.search_space}
    aggregator = sampled.get(AGGREGATOR_KEY) or sweep.base.get("model", {}).get("aggregator")
    return applicable(sampled, aggregator, sweep.family_of(sampled)) if aggregator else sampled


def summarize(results, sweep: SweepConfig) -> dict[str, Any]:
    trials = []
    for result in results:
        metrics = result.metrics or {}
        # No report at all: the sweep ended (time budget, Ctrl-C) before the trial's first epoch.
        status = metrics.get("status", "error" if result.error else "no_result")
        if result.error is not None:  # failed after reporting some epochs (e.g. a shard broke mid-run)
            status = "error"
        elif status == "running":  # its last report was mid-training: the scheduler stopped it
            status = "stopped_early"
        trials.append({
            "trial_id": metrics.get("trial_id"),
            "status": status,
            "epoch": metrics.get("epoch"),
            # What the trial ran with: a fixed-fusion trial of an f-mean study shows no flow options.
            "config": trial_values(result.config or {}, sweep),
            # The headline metrics of the last report (METRIC among them); all of them stay in Aim.
            **{name: metrics.get(name) for name in HEADLINE_METRICS},
            "error": str(result.error) if result.error else None,
        })
    summary: dict[str, Any] = {"sweep": sweep.name, "num_trials": len(trials), "trials": trials, "best": None,
                               "best_trial_file": None}
    try:
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
    except RuntimeError:
        return summary
    best_sampled = {key: value for key, value in (best.config or {}).items() if key in sweep.search_space}
    summary["best"] = {
        "trial_id": best.metrics.get("trial_id"),
        "config": best_sampled,
        "metrics": {key: value for key, value in best.metrics.items() if isinstance(value, (int, float, str))},
        "checkpoint": best.checkpoint.path if best.checkpoint else None,
        "path": best.path,
    }
    return summary
