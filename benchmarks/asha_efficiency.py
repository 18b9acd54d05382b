"""ASHA against plain random search (FIFO) on the same sampled trials (GitHub issue 6).

Both searches run the same study (``sweeps/polymnist_baselines.py``: PoE, MoE, MoPoE, mmJSD;
beta, learning rate), the same number of trials and the *same sampled configurations*, with
the same ``max_concurrent_trials``; only ``scheduler.kind`` differs. Measured per search:

* ``trial_epochs``: the sum over trials of the epochs each one reached (what ASHA saves);
* ``best``: the best objective found (max over trials of their last reported objective).

Target: ASHA reaches random search's best within 2% using at most a third of its trial-epochs.

Budget (a custom ``bench`` plan, built like the ``smoke``/``local`` profiles and turned into a
``SweepConfig`` by ``mmplatform.sweep.script.sweep_config``, run by ``run_sweep``): offline
PolyMNIST-3 (``build_polymnist(modalities=3)``), latent 16, batch 32, a few steps per epoch,
``max_epochs`` 9, grace 1, reduction factor 3 (rungs at epochs 1 and 3, stop at 9). At this
scale coherence and PRD are at chance for every trial (as in the smoke profile), so trials
are ranked by the test log-likelihood: ``objective_weights = {"log_likelihood": 1.0}``.

Same trials in both searches: the sweep layer has no hook for Tune's search algorithm yet
(issue 6 proposes ``SweepConfig.search_seed``, passed to ``BasicVariantGenerator(random_state=
...)``; the benchmark sets it when the field exists). Without it, ``run_sweep`` runs with
``mmplatform.sweep.runner.tune`` wrapped for the call (``_SeededTune``) so that its
``TuneConfig`` carries a seeded ``BasicVariantGenerator``. Seeding numpy's global generator
is not enough: Tune samples lazily as it creates trials and other driver code draws from the
same generator in between (tried: the two searches then drew different trials from the 2nd on). It then *checks* it: the sampled configurations are
read back from each trial's ``params.json`` and compared (``same_trials`` in the output);
the benchmark fails if they differ.

    .venv/bin/python benchmarks/asha_efficiency.py                  # 9 trials, about 15 min on 2 cores
    .venv/bin/python benchmarks/asha_efficiency.py --num-samples 12 --max-epochs 9

Prints one JSON object and writes it to ``--out`` (default
``benchmarks/results/asha_efficiency.json``). Data, trial results and the Aim repo go to a
temporary folder, removed afterwards, unless ``--data-root``. Ray: the cluster in
``RAY_ADDRESS`` if set (the driver only disconnects at the end), else an embedded local one,
shut down at the end.

``--smoke``: 2 trials per search, both at once (the default limit), 3 epochs (rungs at 1, stop
at 3) of 1 step, 100 digits, 40 replays per replay setting; ASHA stops the second trial at epoch
1 if it is worse there than the first. The same two searches, the same checks (same trials,
ASHA's curves prefixes of random search's) and ratios. Trial start-up (a trial driver, a Train
controller and a worker process each) is most of a trial's time here, hence 2 trials. Writes
no file unless ``--out`` is given.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray at import: loopback only

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, parse_with_smoke  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "asha_efficiency.json"
SEARCH_SEED = 20260
TARGET_GAP, TARGET_RATIO = 0.02, 1.0 / 3.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=9, help="trials per search")
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--max-concurrent-trials", type=int, default=2, help="the same for both searches")
    parser.add_argument("--steps-per-epoch", type=int, default=4)
    parser.add_argument("--search-seed", type=int, default=SEARCH_SEED)
    parser.add_argument("--data-root", help="default: a fresh temporary folder, removed afterwards")
    parser.add_argument("--digits", type=int, default=1000, help="tuples per split of the offline PolyMNIST-3")
    parser.add_argument("--replay-samples", type=int, default=2000,
                        help="random orders replayed (a quarter of it for the resampled 27 and 81 trials)")
    parser.add_argument("--out", default=str(RESULTS), help="the JSON file written")
    return parse_with_smoke(parser, {"num_samples": 2, "max_epochs": 3, "steps_per_epoch": 1, "digits": 100,
                                     "replay_samples": 40})


def theoretical_asha_epochs(n: int, max_t: int, grace: int, rf: float) -> dict:
    """Trial-epochs of synchronous successive halving (one bracket) vs. training all n to max_t.

    A rung at r_k = grace * rf**k (below max_t) keeps floor(n / rf**(k+1)) trials (at least
    one) for the next rung; the survivors of the last rung train to max_t. Ray's ASHA is
    asynchronous: a trial is promoted when it is in the top 1/rf of the results *recorded so
    far* at that rung, so the first trials to reach a rung always continue and the real count
    is higher than this lower bound.
    """
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r = int(round(r * rf))
    milestones = rungs + [max_t]
    alive, total, previous = n, 0, 0
    survivors = []
    for k, milestone in enumerate(milestones):
        total += alive * (milestone - previous)
        survivors.append(alive)
        previous = milestone
        alive = max(1, math.floor(n / rf ** (k + 1)))
    return {"milestones": milestones, "trials_reaching": survivors, "trial_epochs": total,
            "ratio_to_random": total / (n * max_t)}


def pin_ray_address() -> None:
    """Worker setup hook: point Ray's address auto-detection at this worker's own cluster.

    Ray Train's ``PlacementGroupCleaner`` (the actor that frees a stopped trial's placement
    group) opens a State API client with no address, i.e. auto-detection, which fails with
    "Found multiple active Ray instances" on a machine where other users run Ray too. The
    placement groups of every trial ASHA stops then leak, and the next trials starve
    (WorkerGroupStartupTimeoutError forever). Pinning RAY_ADDRESS inside the workers of our
    embedded cluster fixes it without connecting the driver anywhere else.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def start_embedded_ray() -> dict:
    """``mmplatform.ray_runtime.ensure_ray``'s embedded local Ray, plus ``pin_ray_address``."""
    import ray

    from mmplatform.ray_runtime import ensure_ray, local_logical_cpus

    if os.environ.get("RAY_ADDRESS"):
        return ensure_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=local_logical_cpus(), include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"worker_process_setup_hook": pin_ray_address})
    return ensure_ray()  # initialized: returns the cluster's resources


def bench_plan(study, args: argparse.Namespace):
    from data_pipelines.polymnist.descriptor import STUDY_MODALITIES, build_offline
    from mmplatform import paths
    from mmplatform.sweep.profiles import ProfileDefaults, SweepPlan, _template
    from mmplatform.sweep.search_space import Choice

    data = ProfileDefaults(folder=f"polymnist3-bench-{args.digits}",
                           build_offline=build_offline(len(STUDY_MODALITIES), args.digits),
                           config={"data": {"modalities": STUDY_MODALITIES}})
    return SweepPlan(
        profile="bench",
        dataset=study.descriptor,
        data=data,
        base=_template(
            study, data,
            data={"batch_size": 32, "steps_per_epoch": args.steps_per_epoch,
                  "loader_workers": 0, "eval_batch_size": 128},
            model={"latent_dim": 16},
            evaluation={"sample_limit": 128, "log_likelihood_samples": 2, "min_classifier_score": 0.0,
                        "metrics": ["log_likelihood"], "objective_weights": {"log_likelihood": 1.0}},
            scaling={"num_workers": 1},
        ),
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        classifier_max_epochs=1,
        driver_resources={"CPU": 1.0},
        storage_path=str(paths.results_dir()),
        space_overrides={"model.latent_dim": Choice(values=[16])},
        max_concurrent_trials=args.max_concurrent_trials,
    )


def sampled_configs(experiment_dir: Path, keys) -> list[dict]:
    """What each trial of a finished search was given, in a canonical order."""
    configs = []
    for params in sorted(experiment_dir.glob("*/params.json")):
        values = json.loads(params.read_text())
        configs.append({key: values[key] for key in sorted(keys) if key in values})
    return sorted(configs, key=lambda c: json.dumps(c, sort_keys=True))


def learning_curves(experiment_dir: Path, keys) -> list[dict]:
    """Each trial's sampled values and its objective by epoch, in the order Tune created them."""
    trials = []
    for params in experiment_dir.glob("*/params.json"):
        values = json.loads(params.read_text())
        curve = {}
        result_file = params.parent / "result.json"
        for line in result_file.read_text().splitlines() if result_file.exists() else []:
            row = json.loads(line)
            if row.get("objective") is not None and row.get("epoch") is not None:
                curve[int(row["epoch"])] = float(row["objective"])
        name = params.parent.name  # run_trial_<exp>_<NNNNN>_<index>_...: the creation order
        trials.append({"index": int(name.split("_")[3]),
                       "config": {key: values[key] for key in sorted(keys) if key in values},
                       "curve": [curve[e] for e in sorted(curve)]})
    return sorted(trials, key=lambda t: t["index"])


def replay_asha(curves: list[list[float]], max_t: int, grace: int, rf: float, concurrency: int) -> dict:
    """Ray's own ASHA bracket (``_Bracket``) replayed on full learning curves.

    Trials start in the given order, ``concurrency`` at a time, every epoch takes one time
    unit (results at equal times in start order); a stopped or finished trial frees its
    slot. Returns the trial-epochs spent and the best objective among the trials' last epochs.
    """
    from types import SimpleNamespace

    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(grace, max_t, rf, 0, stop_last_trials=True)
    pending = list(range(len(curves)))
    running: dict[int, tuple[float, int]] = {}  # trial -> (time of its next result, epoch)
    reached = [0] * len(curves)
    now = 0.0
    while pending or running:
        while pending and len(running) < concurrency:
            running[pending.pop(0)] = (now + 1, 1)
        trial, (now, epoch) = min(running.items(), key=lambda item: (item[1][0], item[0]))
        reached[trial] = epoch
        action = bracket.on_result(SimpleNamespace(trial_id=str(trial)), epoch, curves[trial][epoch - 1])
        if action == "STOP" or epoch >= min(max_t, len(curves[trial])):
            del running[trial]
        else:
            running[trial] = (now + 1, epoch + 1)
    best = max(float(curves[t][reached[t] - 1]) for t in range(len(curves)))
    return {"trial_epochs": sum(reached), "best": best}


def replay_study(trials: list[dict], args: argparse.Namespace, samples: int) -> dict:
    """ASHA's expected savings on random search's own curves: this order, random orders, more trials."""
    import numpy as np

    curves = [t["curve"] for t in trials]
    if not curves or any(len(c) < args.max_epochs for c in curves):
        return {"error": "random search's curves are incomplete"}
    full_best = max(float(c[-1]) for c in curves)

    def cost(n):
        return n * args.max_epochs

    def summarize(runs, n):
        ratios = np.array([r["trial_epochs"] / cost(n) for r in runs])
        gaps = np.array([(r["full_best"] - r["best"]) / abs(r["full_best"]) for r in runs])
        return {"mean_ratio": float(ratios.mean()), "mean_gap": float(gaps.mean()),
                "p_ratio_met": float((ratios <= TARGET_RATIO).mean()), "p_gap_met": float((gaps <= TARGET_GAP).mean()),
                "p_both_met": float(((ratios <= TARGET_RATIO) & (gaps <= TARGET_GAP)).mean())}

    rng = np.random.default_rng(0)
    report = {}
    for concurrency in sorted({1, args.max_concurrent_trials}):
        this_order = replay_asha(curves, args.max_epochs, args.grace_period, args.reduction_factor, concurrency)
        this_order.update(ratio=this_order["trial_epochs"] / cost(len(curves)),
                          gap=(full_best - this_order["best"]) / abs(full_best))
        report[f"concurrency_{concurrency}"] = {"sampled_order": this_order}
        for n in (len(curves), 27, 81):
            runs = []
            for _ in range(samples if n == len(curves) else samples // 4):
                # n == the real count: a random order of the real trials; more: resampled curves.
                pick = rng.permutation(len(curves)) if n == len(curves) else rng.integers(0, len(curves), n)
                chosen = [curves[i] for i in pick]
                if n != len(curves):  # break the ties of repeated curves (ASHA promotes on ties)
                    chosen = [list(np.asarray(c) * (1 + 1e-7 * rng.standard_normal())) for c in chosen]
                run = replay_asha(chosen, args.max_epochs, args.grace_period, args.reduction_factor, concurrency)
                run["full_best"] = max(float(c[-1]) for c in chosen)
                runs.append(run)
            label = "random_orders" if n == len(curves) else f"resampled_{n}_trials"
            report[f"concurrency_{concurrency}"][label] = summarize(runs, n)
    return report


class _SeededTune:
    """``ray.tune`` as ``mmplatform.sweep.runner`` sees it, with a seeded search algorithm.

    The minimal wrapper until the sweep layer has ``SweepConfig.search_seed``: every Tune
    name passes through, but ``TuneConfig`` gets ``BasicVariantGenerator(random_state=seed)``
    (its own numpy generator). Tune ignores ``TuneConfig.max_concurrent_trials`` when given a
    search generator, so the limit moves into the generator.
    """

    def __init__(self, tune, seed: int):
        self._tune, self._seed = tune, seed

    def __getattr__(self, name):
        return getattr(self._tune, name)

    def TuneConfig(self, *, max_concurrent_trials=None, **kwargs):  # noqa: N802 (Tune's name)
        from ray.tune.search import BasicVariantGenerator

        search = BasicVariantGenerator(random_state=self._seed, max_concurrent=max_concurrent_trials or 0)
        return self._tune.TuneConfig(search_alg=search, **kwargs)


def run_search(study, plan, kind: str, name: str, seed: int, resources: dict) -> dict:
    from mmplatform.sweep import runner
    from mmplatform.sweep.script import parse_args as sweep_args
    from mmplatform.sweep.script import sweep_config

    config = sweep_config(study, plan, sweep_args(study, ["--scheduler", kind, "--name", name]))
    hooked = "search_seed" in type(config).model_fields  # the proposed hook, once the sweep layer has it
    if hooked:
        config = config.model_copy(update={"search_seed": seed})
    else:
        runner.tune = _SeededTune(runner.tune, seed)
    started = time.perf_counter()
    try:
        summary = runner.run_sweep(config, plan.storage_path, resources)
    finally:
        if not hooked:
            runner.tune = runner.tune._tune
    wall = time.perf_counter() - started
    trials = summary["trials"]
    errors = [t for t in trials if t["error"] or t["objective"] is None]
    if errors:
        raise SystemExit(f"{kind}: {len(errors)} trial(s) failed: {errors[:2]}")
    return {
        "config": config,
        "trials": sorted(trials, key=lambda t: t["trial_id"]),
        "trial_epochs": sum(int(t["epoch"]) for t in trials),
        "best": max(float(t["objective"]) for t in trials),
        "platform_best": summary["best"]["metrics"]["objective"] if summary["best"] else None,
        "wall_s": wall,
        "sampled": sampled_configs(Path(plan.storage_path) / name, config.search_space),
        "curves": learning_curves(Path(plan.storage_path) / name, config.search_space),
    }


def main() -> dict:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        root = args.data_root or stack.enter_context(tempfile.TemporaryDirectory(prefix="asha-bench-"))
        try:
            return benchmark(args, Path(root))
        finally:
            import ray

            # The embedded Ray this process started (before its folder goes), or only this
            # driver's connection to the cluster in RAY_ADDRESS.
            ray.shutdown()


def benchmark(args: argparse.Namespace, root: Path) -> dict:
    os.environ["MMPLATFORM_DATA_ROOT"] = str(root)  # before mmplatform reads any location
    for variable in ("MMPLATFORM_DATASETS_DIR", "MMPLATFORM_RESULTS_DIR", "MMPLATFORM_AIM_REPO"):
        os.environ.pop(variable, None)
    sys.path.insert(0, str(REPO))

    from sweeps.polymnist_baselines import STUDY

    from mmplatform.sweep.script import cluster_resources, prepare_dataset

    started = time.perf_counter()
    plan = bench_plan(STUDY, args)
    start_embedded_ray()
    resources = cluster_resources()  # the embedded local Ray with the dashboard (no RAY_ADDRESS)
    prepare_dataset(plan, None)
    # Create the Aim repo before two trials race to (one of them fails on a half-made repo).
    from aim import Repo

    Repo.from_path(str(root / "aim"), init=True)
    setup_s = time.perf_counter() - started

    stamp = time.strftime("%H%M%S")
    asha = run_search(STUDY, plan, "asha", f"bench-asha-{stamp}", args.search_seed, resources)
    fifo = run_search(STUDY, plan, "fifo", f"bench-fifo-{stamp}", args.search_seed, resources)
    same_trials = asha["sampled"] == fifo["sampled"]

    # Same config, same training seed: ASHA's trials should be prefixes of random search's curves.
    by_config = {json.dumps(t["config"], sort_keys=True): t["curve"] for t in fifo["curves"]}
    deviation = 0.0
    for trial in asha["curves"]:
        twin = by_config.get(json.dumps(trial["config"], sort_keys=True), [])
        if len(twin) < len(trial["curve"]):
            deviation = math.inf
            break
        deviation = max([deviation] + [abs(a - b) / abs(b) for a, b in zip(trial["curve"], twin)])
    gap = (fifo["best"] - asha["best"]) / abs(fifo["best"])  # > 0: ASHA's best is worse
    ratio = asha["trial_epochs"] / fifo["trial_epochs"]
    result = {
        "benchmark": "asha_efficiency",
        "smoke": args.smoke,
        "asha_trial_epochs": asha["trial_epochs"],
        "random_trial_epochs": fifo["trial_epochs"],
        "asha_best": asha["best"],
        "random_best": fifo["best"],
        "relative_gap": gap,
        "trial_epoch_ratio": ratio,
        "target": {"max_relative_gap": TARGET_GAP, "max_trial_epoch_ratio": TARGET_RATIO,
                   "gap_met": gap <= TARGET_GAP, "ratio_met": ratio <= TARGET_RATIO,
                   "met": gap <= TARGET_GAP and ratio <= TARGET_RATIO},
        "objective": "test log-likelihood (objective_weights={'log_likelihood': 1.0}): coherence/PRD "
                     "are at chance at this training scale",
        "same_trials": same_trials,
        "asha_curves_vs_random_max_relative_deviation": deviation,
        "replay_on_random_curves": replay_study(fifo["curves"], args, args.replay_samples),
        "theoretical_sync_sha": theoretical_asha_epochs(args.num_samples, args.max_epochs,
                                                        args.grace_period, args.reduction_factor),
        "settings": {
            "study": STUDY.name, "search_space": {k: v.model_dump() for k, v in asha["config"].search_space.items()},
            "num_samples": args.num_samples, "max_epochs": args.max_epochs, "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor, "max_concurrent_trials": args.max_concurrent_trials,
            "search_seed": args.search_seed, "steps_per_epoch": args.steps_per_epoch, "batch_size": 32,
            "latent_dim": 16, "dataset": f"offline PolyMNIST-3 ({args.digits:,} digits)", "eval_sample_limit": 128,
            "replay_samples": args.replay_samples,
        },
        "asha_epochs_per_trial": {t["trial_id"]: t["epoch"] for t in asha["trials"]},
        "random_epochs_per_trial": {t["trial_id"]: t["epoch"] for t in fifo["trials"]},
        "asha_trials": asha["trials"],
        "random_trials": fifo["trials"],
        "random_curves": [{"config": t["config"], "objective_by_epoch": t["curve"]} for t in fifo["curves"]],
        "asha_platform_best": asha["platform_best"],
        "random_platform_best": fifo["platform_best"],
        "wall_s": {"setup": setup_s, "asha": asha["wall_s"], "random": fifo["wall_s"],
                   "total": time.perf_counter() - started},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_end": os.getloadavg()[0]},
    }
    emit(result, args.out)
    if not same_trials:
        raise SystemExit("the two searches did not sample the same trials: the comparison is not valid")
    return result


if __name__ == "__main__":
    main()
