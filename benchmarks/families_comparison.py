"""The model families at an equal budget on PolyMNIST-3: MoPoE, JNF, JNF-DCCA, MMVM and its
independent-VAEs baseline, each trained through the platform's real path, plus each one's
train-step cost next to MoPoE's.

Part 1, quality: every method trains through ``mmplatform.training.launcher.fit`` (Ray Train, one
worker) on the same data, epochs, steps, batch, learning rate, seed, latent size, networks and
likelihood (the thesis comparison's ``learns`` setting: conv mu/logvar heads, Gaussian(0.1)), then
is evaluated once on the test set: latent accuracy per subset, coherence (missing, reconstruction,
random) and PRD (missing, reconstruction, random) with the platform's coherence classifiers.
What a family cannot do is reported as ``n/a``, never 0 (MMVM has no unconditional generation).

Part 2, cost: for every method and every training stage, the mean wall time of one training
step (forward, backward, Adam) on one fixed batch of real shards in this process, one torch
thread, after warm-up, as a ratio to MoPoE's step measured in the same run (absolute times on a
shared machine only make sense next to the load average, which the report records).

The defaults (8 epochs x 200 steps of batch 128, latent 64, beta 1, learning rate 1e-3): at 8 x 100
steps and 5e-4 MoPoE stayed near chance (latent accuracy 0.23, missing coherence 0.10), which
compares nothing. Run (about an hour on 2 shared CPU cores with the defaults)::

    .venv/bin/python benchmarks/families_comparison.py

Outputs ``--out`` (default ``benchmarks/results/families_comparison.json``) and the markdown
next to it; the JSON is rewritten after every method. Data and classifiers are built in (and
reused from) ``--work-dir`` with the thesis comparison's ``prepare`` (PolyMNIST-3 generated
offline from real MNIST digits, 4,000 / 1,000 tuples). ``--smoke``: 100 tuples per split, 3
epochs of 2 steps of batch 16 (every stage gets at least one), latent 4, a tiny evaluation; the
same path and tables.

Equal budget means equal training steps: JNF spends its first half on the joint ELBO and its
second half fitting the unimodal flows (the paper's split); JNF-DCCA a quarter on DCCA first.
MMVM's alpha falls from 1 to 0 over the first half of the steps (the reference code's 300,000
steps are more than a PolyMNIST training has; the annealing length is the family's option).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_facts, parse_with_smoke  # noqa: E402
from thesis_comparison import KINDS, SUBSETS, prepared_workspace  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

METHODS: dict[str, dict] = {
    # method -> model settings beyond the shared ones; "mmvm" gets its annealing length below.
    "mopoe": {"family": "aggregator", "aggregator": "mopoe"},
    "jnf": {"family": "jnf"},
    "jnf_dcca": {"family": "jnf_dcca"},
    "mmvm": {"family": "mmvm"},
    "independent": {"family": "mmvm", "family_options": {"prior": "standard_normal"}},
}
BASELINE = "mopoe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/families_comparison"),
                        help="data, classifiers, Ray results and Aim repo (--smoke: a temporary folder)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--digits", type=int, default=None, help="tuples per split (default: all)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=64,
                        help="every method's (JNF samples its MAF one dimension at a time)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="above the papers' 5e-4, as the local sweep profile: more learning per CPU minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--networks", default="polymnist_conv_heads")
    parser.add_argument("--likelihood", default="gaussian:0.1", metavar="KIND:SCALE")
    parser.add_argument("--prd-runs", type=int, default=3)
    parser.add_argument("--probe-train-samples", type=int, default=1000)
    parser.add_argument("--random-coherence-samples", type=int, default=1000)
    parser.add_argument("--sample-limit", type=int, default=None)
    parser.add_argument("--classifier-epochs", type=int, default=25)
    parser.add_argument("--min-classifier-score", type=float, default=0.9)
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs (torch threads) of the Ray Train worker")
    parser.add_argument("--cost-steps", type=int, default=20, help="timed steps per method and stage")
    parser.add_argument("--cost-only", action="store_true", help="part 2 only (no training)")
    parser.add_argument("--out", type=Path, default=RESULTS / "families_comparison.json")
    args = parse_with_smoke(parser, {
        "work_dir": None, "digits": 100, "epochs": 3, "steps_per_epoch": 2, "batch_size": 16, "latent_dim": 4,
        "prd_runs": 1, "probe_train_samples": 50, "random_coherence_samples": 50, "sample_limit": 50,
        "classifier_epochs": 1, "min_classifier_score": 0.0, "cost_steps": 2,
    }, argv)
    args.backgrounds = "procedural"  # what thesis_comparison.prepare reads
    kind, _, scale = args.likelihood.partition(":")
    args.likelihood_choice = {"kind": kind, **({"scale": float(scale)} if scale else {})}
    return args


def model_settings(method: str, args: argparse.Namespace) -> dict:
    model = {"latent_dim": args.latent_dim, "beta": args.beta, "networks": {"*": args.networks},
             "likelihoods": {"*": args.likelihood_choice}, **METHODS[method]}
    if method == "mmvm":
        model["family_options"] = {"alpha_anneal_steps": max(1, args.epochs * args.steps_per_epoch // 2)}
    return model


def train_config(method: str, args: argparse.Namespace, data_root: Path, clf_dir: Path, run_tag: str):
    from mmplatform.config import build_config

    work = args.work_dir
    return build_config({
        "name": f"families-{method}-seed{args.seed}-{run_tag}",  # unique: the same name would resume
        "storage_path": str(work / "ray_results"),
        "data": {"path": str(data_root), "batch_size": args.batch_size, "steps_per_epoch": args.steps_per_epoch,
                 "loader_workers": 0, "eval_batch_size": 250},
        "model": model_settings(method, args),
        "training": {"epochs": args.epochs, "learning_rate": args.learning_rate, "seed": args.seed,
                     "max_failures": 0},
        "evaluation": {
            "every_n_epochs": args.epochs, "sample_limit": args.sample_limit,
            "metrics": ["coherence", "latent_probe", "prd"],
            "probe_train_samples": args.probe_train_samples,
            "random_coherence_samples": args.random_coherence_samples, "prd_runs": args.prd_runs,
            "classifiers_dir": str(clf_dir), "min_classifier_score": args.min_classifier_score,
        },
        "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus},
        "tracking": {"experiment": "families_comparison", "repo": str(work / "aim"),
                     "fallback_dir": str(work / "aim_fallback"), "tags": {"benchmark": "families_comparison"}},
    })


def run_method(method: str, args: argparse.Namespace, data_root: Path, clf_dir: Path, run_tag: str) -> dict:
    from mmplatform.training.launcher import fit

    config = train_config(method, args, data_root, clf_dir, run_tag)
    start = time.perf_counter()
    entry: dict = {"settings": config.model.model_dump(mode="json")}
    try:
        result = fit(config)
        entry["error"] = None if result.error is None else repr(result.error)
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    except Exception as error:  # one method failing must not lose the others
        entry["error"], metrics = repr(error), {}
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    entry["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    entry["latent_accuracy"] = {s: metrics.get(f"latent_accuracy/{s}") for s in SUBSETS}
    entry["latent_accuracy_mean"] = metrics.get("latent_accuracy")
    entry["coherence"] = {k: metrics.get(f"coherence_{k}") for k in KINDS}
    entry["prd"] = {k: metrics.get(f"prd_{k}") for k in KINDS}
    entry["hmc_acceptance"] = metrics.get("hmc_acceptance")
    return entry


# ----------------------------------------------------------------------------- cost


def step_costs(args: argparse.Namespace, data_root: Path) -> dict:
    """Seconds per training step of every method's every stage on one fixed batch (1 thread)."""
    import torch

    from data_pipelines.manifest import load_manifest
    from data_pipelines.readers import EvalReader
    from mmplatform.training.model_factory import build_model, model_family_of
    from mmplatform.training.stages import enter_stage

    torch.set_num_threads(1)
    manifest = load_manifest(data_root / "train")
    batch = next(iter(EvalReader(data_root / "train", batch_size=args.batch_size)))
    inputs = batch.inputs
    costs = {}
    for method in args.methods:
        config = train_config(method, args, data_root, data_root, "cost")
        torch.manual_seed(args.seed)
        model = build_model(config, manifest)
        schedule = model_family_of(config).schedule(config.model.family_options, config.training.epochs)
        costs[method] = {}
        for stage in schedule.stages:
            optimizer = enter_stage(model, stage, args.learning_rate)
            model.train()
            times = []
            for step in range(args.cost_steps + 2):  # 2 warm-up steps
                started = time.perf_counter()
                loss = model(inputs).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step >= 2:
                    times.append(time.perf_counter() - started)
            costs[method][stage.name] = {"step_s": statistics.median(times), "stage_epochs": stage.epochs}
    baseline = costs[BASELINE]["train"]["step_s"] if BASELINE in costs else None
    for stages in costs.values():
        for cost in stages.values():
            cost["vs_mopoe"] = cost["step_s"] / baseline if baseline else None
        # The mean step of the whole training, stages weighted by their epochs (the budget's cost).
        total = sum(c["stage_epochs"] for c in stages.values())
        stages["training_mean"] = {"step_s": sum(c["step_s"] * c["stage_epochs"] for c in stages.values()) / total}
        stages["training_mean"]["vs_mopoe"] = stages["training_mean"]["step_s"] / baseline if baseline else None
    return {"costs": costs, "batch_size": args.batch_size, "timed_steps": args.cost_steps, "torch_threads": 1,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


# ----------------------------------------------------------------------------- report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    methods = report["methods"]
    lines = ["# Model families at an equal budget (PolyMNIST-3)", "",
             f"Command: `{report['command']}`", "",
             "Settings: " + ", ".join(f"{k} {report['settings'][k]}" for k in (
                 "epochs", "steps_per_epoch", "batch_size", "latent_dim", "beta", "learning_rate", "networks",
                 "likelihood", "seed")) + ".", ""]
    if methods:
        lines += ["## Latent accuracy per subset", "", "| method | " + " | ".join(SUBSETS) + " | mean |",
                  "|" + "---|" * (len(SUBSETS) + 2)]
        for name, entry in methods.items():
            values = [entry["latent_accuracy"][s] for s in SUBSETS] + [entry["latent_accuracy_mean"]]
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |")
        for table, key in (("Coherence", "coherence"), ("PRD", "prd")):
            lines += ["", f"## {table}", "", "| method | " + " | ".join(KINDS) + " |", "|" + "---|" * (len(KINDS) + 1)]
            for name, entry in methods.items():
                lines.append(f"| {name} | " + " | ".join(_fmt(entry[key][k]) for k in KINDS) + " |")
        lines += ["", "n/a: the family cannot produce it (MMVM has no unconditional generation).", "",
                  "| method | wall s | HMC acceptance | error |", "|---|---|---|---|"]
        for name, entry in methods.items():
            lines.append(f"| {name} | {entry['wall_s']} | {_fmt(entry['hmc_acceptance'])} | {entry['error'] or ''} |")
    if report.get("step_cost"):
        cost = report["step_cost"]
        lines += ["", f"## Train-step cost (batch {cost['batch_size']}, 1 thread, median of {cost['timed_steps']} steps, "
                      f"load average {cost['load_average']})", "", "| method | stage | s/step | vs MoPoE |",
                  "|---|---|---|---|"]
        for name, stages in cost["costs"].items():
            for stage, value in stages.items():
                lines.append(f"| {name} | {stage} | {value['step_s']:.4f} | {_fmt(value['vs_mopoe'])} |")
    if report.get("comparison_text"):
        lines += ["", "## What it shows", "", report["comparison_text"]]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    with prepared_workspace(args, "families-comparison-") as (data_root, clf_dir, classifiers):
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        report = {"benchmark": "families_comparison", "settings": settings, "classifiers": classifiers,
                  "command": " ".join(["python benchmarks/families_comparison.py", *(argv or sys.argv[1:])]),
                  "methods": {}, "host": machine_facts()}
        report["step_cost"] = step_costs(args, data_root)
        write(report, args.out)
        if not args.cost_only:
            run_tag = time.strftime("%Y%m%d-%H%M%S")
            for method in args.methods:
                print(f"=== {method}", flush=True)
                report["methods"][method] = entry = run_method(method, args, data_root, clf_dir, run_tag)
                print(f"{method}: {entry['wall_s']}s error={entry['error']} latent={entry['latent_accuracy_mean']} "
                      f"coherence={entry['coherence']} prd={entry['prd']}", flush=True)
                write(report, args.out)
        report["total_wall_s"] = round(time.perf_counter() - start, 1)
        report["host"] = machine_facts()
        write(report, args.out)
        print(json.dumps(report, default=str), flush=True)  # the one JSON object, last on stdout
        return 0 if all(e["error"] is None for e in report["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
