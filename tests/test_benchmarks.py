"""Every benchmark runs at its smoke size, so none of them rots unnoticed (GitHub issue 11).

Each ``benchmarks/*.py`` (``_``-prefixed helpers excepted) is found by glob and run as a user
runs it, ``python benchmarks/<name>.py --smoke --out <tmp>/<name>.json`` from the repository
root: it must exit 0, print its result as one JSON object (the last JSON line on stdout) whose
``benchmark`` is the script's name, write the same object to ``--out`` and leave
``benchmarks/results/`` alone. Each result is then checked for what the benchmark compares
(its ratios to its baseline, finite and consistent): numbers, never timings against targets.

A new benchmark without ``--smoke`` fails here, and so does one without an entry in
``CHECKS``. Benchmarks that use Ray attach to the test session's one cluster (``RAY_ADDRESS``
and its auth token in their environment) instead of starting their own.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(path for path in (REPO / "benchmarks").glob("*.py") if not path.name.startswith("_"))
RESULTS = REPO / "benchmarks" / "results"
TIMEOUT_S = 600
LOCATION_ENV = ("MMPLATFORM_DATA_ROOT", "MMPLATFORM_DATASETS_DIR", "MMPLATFORM_RESULTS_DIR", "MMPLATFORM_AIM_REPO")
"""Set by other tests' fixtures: a benchmark must choose its own (temporary) locations."""


def last_json_object(stdout: str) -> dict[str, Any]:
    """The last line of ``stdout`` that is a JSON object (progress lines may surround it)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise AssertionError(f"no JSON object on stdout; its end:\n{stdout[-2000:]}")


def uses_ray(script: Path) -> bool:
    pattern = r"^\s*(import ray\b|from ray\b|from mmplatform\.ray_runtime\b)"
    return re.search(pattern, script.read_text(), re.M) is not None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> bool:
    return finite(value) and value > 0


def fraction(value: Any) -> bool:
    return finite(value) and 0.0 <= value <= 1.0


def results_snapshot(stem: str) -> dict[str, int]:
    """The benchmark's default result files (``<stem>.*``) and their modification times."""
    return {path.name: path.stat().st_mtime_ns for path in RESULTS.glob(f"{stem}.*")} if RESULTS.is_dir() else {}


# ---------------------------------------------------------------- per-benchmark checks


def check_aggregator_cost(result: dict, out: Path) -> None:
    aggregators = result["aggregators"]
    assert set(aggregators) == {"mopoe", "mofop", "mopgfm", "mogfm_amortized", "iwmogfm"}
    for name, row in aggregators.items():
        for key in ("step_time_vs_mopoe", "flop_rate_vs_mopoe", "flop_rate_vs_mopoe_cpu_time", "ceiling_fraction",
                    "ceiling_fraction_cpu", "step_s", "flop_per_step", "parameters"):
            assert positive(row[key]), (name, key, row[key])
    assert aggregators["mopoe"]["step_time_vs_mopoe"] == aggregators["mopoe"]["flop_rate_vs_mopoe"] == 1.0
    # The sample-based aggregators decode every subset: more work per step than MoPoE.
    assert all(aggregators[n]["flop_per_step"] > aggregators["mopoe"]["flop_per_step"]
               for n in ("mofop", "mopgfm", "mogfm_amortized", "iwmogfm"))
    assert result["below_80pct_flop_rate"] == [n for n, r in aggregators.items() if r["flop_rate_vs_mopoe"] < 0.8]
    assert positive(result["matmul_gflops"]) and positive(result["matmul_gflop_per_cpu_s"])


def readme_queries() -> list[str]:
    """The example queries of the README's tracking section (the code block after "Example queries")."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("Example queries"):].split("```", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def check_aim_scale(result: dict, out: Path) -> None:
    settings = result["settings"]
    written = result["written"]
    assert len(written) == result["runs_written"] == settings["runs"]
    assert len({run["run_hash"] for run in written}) == settings["runs"]
    assert result["repo_bytes"] > 0 and result["repo_kb_per_run"] > 0
    queries = result["queries"]
    # Every query the README documents, verbatim (the first sweep is make run's, polymnist_fmean-local).
    assert [row["query"] for row in queries] == readme_queries()
    local = settings["sweep_names"][0]
    assert local == "polymnist_fmean-local"
    evaluated = [run for run in written if run["evaluations"] > 0]
    expected = [
        [r for r in written if r["aggregator"] == "mopgfm" and r["beta"] > 1],
        [r for r in written if r["sweep"] == local and r["status"] == "diverged"],
        [r for r in written if r["sweep"] == local and r["aggregator"] == "mofop"],
        evaluated, evaluated, evaluated,
    ]
    for row, runs in zip(queries, expected):
        # Recounted here from the runs written, not from the benchmark's own expectation.
        assert row["returned_runs"] == row["expected_runs"] == len(runs), row
        assert row["ok"] is True and finite(row["seconds"]), row
    # The smoke size is chosen so that no query is trivially empty.
    assert all(row["returned_runs"] > 0 for row in queries), queries
    assert [row.get("returned_series") for row in queries[3:]] == [len(evaluated), len(evaluated), 3 * len(evaluated)]
    assert result["queries_ok"] is True
    ui = result["ui"]
    assert "error" not in ui, ui.get("error")  # at this size aim up must answer
    assert all(row["bytes"] > 0 and finite(row["seconds"]) for row in ui["api"].values()), ui["api"]
    if ui["chromium"] is None:
        assert ui["pages"] == "chromium not installed"
    else:
        pages = ui["pages"]
        # The runs page shows a row per run (all of them at this size), the explorer a line per series.
        assert pages["runs"]["rendered"] and pages["runs"]["elements"] == len(written), pages["runs"]
        assert pages["metrics"]["rendered"] and pages["metrics"]["elements"] == len(evaluated), pages["metrics"]
    assert len(result["machine"]["load_average"]) == len(result["machine"]["load_average_at_start"]) == 3
    # One trial, samples at every evaluation vs the platform's log-spaced ones (fewer steps, fewer bytes).
    long_run = result["long_run"]
    if not settings["long_epochs"]:
        assert long_run is None
        return
    assert long_run["evaluations"] > 3
    assert 0 < long_run["platform_policy"]["repo_bytes"] < long_run["every_evaluation"]["repo_bytes"]
    assert long_run["size_ratio"] == pytest.approx(
        long_run["platform_policy"]["repo_bytes"] / long_run["every_evaluation"]["repo_bytes"], abs=0.001)


def check_asha_efficiency(result: dict, out: Path) -> None:
    settings = result["settings"]
    trials, epochs = settings["num_samples"], settings["max_epochs"]
    assert result["same_trials"] is True
    # Random search trains every trial to the end; ASHA at least one epoch each, at most that.
    assert result["random_trial_epochs"] == trials * epochs
    assert trials <= result["asha_trial_epochs"] <= trials * epochs
    assert result["trial_epoch_ratio"] == pytest.approx(result["asha_trial_epochs"] / result["random_trial_epochs"])
    assert 0 < result["trial_epoch_ratio"] <= 1
    assert finite(result["relative_gap"]) and finite(result["asha_best"]) and finite(result["random_best"])
    assert finite(result["asha_curves_vs_random_max_relative_deviation"])
    assert isinstance(result["target"]["met"], bool)
    assert len(result["random_curves"]) == trials
    assert all(len(c["objective_by_epoch"]) == epochs for c in result["random_curves"])
    replay = result["replay_on_random_curves"]
    assert "error" not in replay and replay, replay
    for concurrency in replay.values():
        assert fraction(concurrency["sampled_order"]["ratio"])
        assert all(fraction(v) for k, v in concurrency["random_orders"].items() if k.startswith("p_"))
    assert result["theoretical_sync_sha"]["trial_epochs"] <= trials * epochs


def check_celeba_data(result: dict, out: Path) -> None:
    for key in ("build_images_per_s", "build_s", "shard_samples_per_s", "jpeg_samples_per_s", "speedup"):
        assert positive(result[key]), (key, result[key])
    # Rounded to 2 decimals in the report.
    assert result["speedup"] == pytest.approx(result["shard_samples_per_s"] / result["jpeg_samples_per_s"], abs=0.006)
    config = result["config"]
    assert 0 < config["train_samples"] < config["built_images"] <= config["images"]
    assert len(result["machine"]["load_average"]) == len(result["machine"]["load_average_at_start"]) == 3


def check_component_selection(result: dict, out: Path) -> None:
    results = result["results"]
    assert list(results) == result["settings"]["aggregators"] and results
    for name, orders in results.items():
        assert set(orders) == {"shuffled", "fixed"}, name
        for order, row in orders.items():
            variances = row["gradient_variance"]
            assert set(variances) == {"random", "stratified"}
            assert all(positive(v) for v in variances.values()), (name, order, variances)
            # Rounded to 4 decimals in the report.
            assert row["variance_ratio"] == pytest.approx(variances["stratified"] / variances["random"], abs=1e-4)
            low, high = row["ratio_ci95"]
            assert 0 < low <= high, (name, order, row)
            assert finite(row["mean_gap_z"]) and row["mean_gap_z"] >= 0
    headline = results[result["settings"]["aggregators"][0]]["shuffled"]
    assert result["variance_ratio"] == headline["variance_ratio"]
    assert result["gradient_variance"] == headline["gradient_variance"]


def check_cub_data(result: dict, out: Path) -> None:
    for key in ("build_images_per_s", "build_samples_per_s", "build_s", "shard_samples_per_s", "jpeg_samples_per_s",
                "speedup"):
        assert positive(result[key]), (key, result[key])
    assert result["speedup"] == pytest.approx(result["shard_samples_per_s"] / result["jpeg_samples_per_s"], abs=0.006)
    config = result["config"]
    assert 0 < config["built_images"] <= config["images"]
    # 10 captions per image, each a sample; some may be dropped for equal shards.
    assert 0 < config["train_samples"] < config["built_samples"] <= 10 * config["built_images"]
    assert config["vocabulary_size"] > 3  # <exc>, <pad>, <eos> and words
    assert len(result["machine"]["load_average"]) == len(result["machine"]["load_average_at_start"]) == 3


def check_data_reader(result: dict, out: Path) -> None:
    for key in ("shard_samples_per_s", "png_samples_per_s", "shard_samples_per_s_10x", "shard_peak_rss_mb",
                "png_peak_rss_mb", "shard_peak_rss_mb_10x", "shard_peak_pss_mb", "png_peak_pss_mb",
                "shard_peak_pss_mb_10x"):
        assert positive(result[key]), (key, result[key])
    # Rounded to 2 decimals in the report.
    assert result["speedup"] == pytest.approx(result["shard_samples_per_s"] / result["png_samples_per_s"], abs=0.006)
    config = result["config"]
    assert config["train_tuples"] > 0
    assert config["train_tuples_10x"] == config["train_tuples"] * config["scale_factor"]


def check_evaluation(result: dict, out: Path) -> None:
    runs = result["runs"]
    assert set(runs) == {"full", "sampled"}
    for label, variants in runs.items():
        assert set(variants) == {"before", "after"}, label
        for variant, run in variants.items():
            assert run["records"] > 0
            assert positive(run["ceiling_fraction"]) and positive(run["generation_ceiling_fraction"]), (label, run)
            assert all(finite(v) and v >= 0 for v in run["seconds"].values()), (label, run["seconds"])
            assert fraction(run["prd_fraction"])
            # FLOPs affine in the samples evaluated: the counted constant plus the per-sample slope.
            expected = result["flop_constant"] + result["flop_per_test_sample"] * run["evaluated_samples"]
            assert run["flop_total"] == pytest.approx(expected)
        # The same records either way; before ran the classifier's body a second time per image.
        assert variants["before"]["records"] == variants["after"]["records"]
        assert variants["after"]["flop_executed"] == pytest.approx(variants["after"]["flop_total"])
        assert variants["before"]["flop_executed"] > variants["after"]["flop_executed"]
    assert runs["sampled"]["after"]["evaluated_samples"] < runs["full"]["after"]["evaluated_samples"]
    assert positive(result["flop_per_test_sample"]) and positive(result["flop_constant"])
    assert result["ceiling_fraction"] == runs["full"]["after"]["ceiling_fraction"]
    assert positive(result["matmul_gflops"])
    assert result["table"]["total"] == {f"{label}/{variant}": run["total_seconds"]
                                        for label, variants in runs.items() for variant, run in variants.items()}
    assert all(isinstance(goal["met"], bool) and finite(goal["value"]) for goal in result["goals"].values())


def check_prd_agreement(result: dict, out: Path) -> None:
    assert set(result["pairs"]) == {"reconstructed", "prior", "real_train"}
    for name, pair in result["pairs"].items():
        for method in ("sklearn", "torch", "torch_converged"):
            assert set(pair[method]) == {"score", "f_8", "f_1_8"}
            for value in pair[method].values():
                assert value["min"] <= value["mean"] <= value["max"] and finite(value["sd"]) and value["sd"] >= 0
        assert all(finite(v) for v in pair["bias_in_reference_sd"]["torch"].values()), name
        assert all(positive(v) for v in pair["inertia"]["torch"].values()), name
        assert positive(pair["speedup"])
        # Identical sets score near 0.72 with any clustering (PRD's scalar of a perfect generator).
        if name == "real_train":
            assert 0.6 < pair["torch"]["score"]["mean"] < 0.75


def check_fault_matrix(result: dict, out: Path) -> None:
    faults = result["faults"]
    assert list(faults) == result["settings"]["faults"] and faults
    for name, row in faults.items():
        assert row["injected"] is True, (name, row["message"])
        # Every fault survived or reported by name; nothing lost, nothing duplicated.
        assert row["outcome"] in ("survived", "reported"), (name, row)
        assert row["metrics_lost"] == 0 and row["duplicate_runs"] == 0, (name, row)
        assert row["trials_lost"] in (None, 0), (name, row)
        assert finite(row["epochs_lost"]) and row["epochs_lost"] >= 0, (name, row)
        assert f"| {name} |" in result["table"]
    if "worker_killed" in faults:  # killed half-way through epoch 2, resumed from epoch 1
        assert faults["worker_killed"]["epochs_lost"] == 0.5
    if "checkpoint_unwritable" in faults:
        row = faults["checkpoint_unwritable"]
        assert row["outcome"] == "reported" and row["message"].startswith("CheckpointWriteError: ")
        assert row["details"]["last_checkpoint_equals_baseline"] is True
    assert result["all_survived_or_reported"] is True
    assert result["metrics_lost"] == 0 and result["duplicate_runs"] == 0
    assert result["baseline"]["aim_points"] > 0 and result["baseline"]["epochs"] == result["settings"]["epochs"]
    assert len(result["machine"]["load_average"]) == len(result["machine"]["load_average_at_start"]) == 3


def check_latent_emergence(result: dict, out: Path) -> None:
    cases = result["cases"]
    assert result["baseline"] in cases and len(cases) >= 2
    for name, case in cases.items():
        steps = [point["step"] for point in case["curve"]]
        assert steps and steps[-1] == result["steps"], (name, steps)
        for point in case["curve"]:
            assert len(point["linear_probe"]) == case["case"]["modalities"]  # one probe per modality
            assert all(fraction(accuracy) for accuracy in point["linear_probe"])
            assert finite(point["divergence"]) and all(finite(v) for v in point["nll"].values())
        assert fraction(case["final_probe_mean"]) and finite(case["final_divergence"])


def check_thesis_comparison(result: dict, out: Path) -> None:
    subsets = ["m0", "m1", "m2", "m0_m1", "m0_m2", "m1_m2", "m0_m1_m2"]  # Table 6.1's columns
    methods = result["methods"]
    assert set(methods) == set(result["settings"]["methods"]) and len(methods) >= 3
    for name, method in methods.items():
        assert method["error"] is None, (name, method["error"])
        assert set(method["latent_accuracy"]) == set(subsets)
        assert all(fraction(v) for v in method["latent_accuracy"].values()), (name, method["latent_accuracy"])
        for kind in ("missing", "reconstruction", "random"):
            assert fraction(method["coherence"][kind]) and fraction(method["prd"][kind]), (name, kind)
    orderings = result["orderings"]
    assert "latent accuracy (mean of 7 subsets)" in orderings
    for criterion, ordering in orderings.items():
        assert sorted(ordering["ours"]) == sorted(methods) == sorted(ordering["thesis"]), criterion
        assert ordering["spearman"] is None or -1 <= ordering["spearman"] <= 1, (criterion, ordering)
    markdown = out.with_suffix(".md").read_text()
    assert "## Ordering: ours vs thesis" in markdown and "## Table 6.1" in markdown
    settings = result["settings"]
    repeated = {m: seeds for m, seeds in result["seed_repeats"].items()}
    expected = {m: {str(seed) for seed in settings["repeat_seeds"] if seed != settings["seed"]}
                for m in settings["repeat_methods"] if m in methods and set(settings["repeat_seeds"]) - {settings["seed"]}}
    assert {m: set(seeds) for m, seeds in repeated.items()} == expected
    for method, seeds in repeated.items():
        for seed, entry in seeds.items():
            assert entry["error"] is None and entry["seed"] == int(seed) != methods[method]["seed"]
            latent = result["seed_spread"]["values"][method]["latent mean"]
            assert latent[seed] == pytest.approx(sum(entry["latent_accuracy"].values()) / len(subsets))
            spread = result["seed_spread"]["spread"][method]["latent mean"]
            assert spread == pytest.approx(max(latent.values()) - min(latent.values()))
    assert ("## Seed spread" in markdown) == bool(expected)


def check_families_comparison(result: dict, out: Path) -> None:
    subsets = ["m0", "m1", "m2", "m0_m1", "m0_m2", "m1_m2", "m0_m1_m2"]
    methods = result["methods"]
    assert set(methods) == set(result["settings"]["methods"]) == {"mopoe", "jnf", "jnf_dcca", "mmvm", "independent"}
    for name, method in methods.items():
        assert method["error"] is None, (name, method["error"])
        assert all(fraction(method["latent_accuracy"][s]) for s in subsets), (name, method["latent_accuracy"])
        unconditional = method["settings"]["family"] != "mmvm"
        for kind in ("missing", "reconstruction", "random"):
            if kind == "random" and not unconditional:  # skipped, never a 0
                assert method["coherence"][kind] is None and method["prd"][kind] is None, name
            else:
                assert fraction(method["coherence"][kind]) and fraction(method["prd"][kind]), (name, kind)
        assert (method["hmc_acceptance"] is not None) == name.startswith("jnf"), name
    costs = result["step_cost"]["costs"]
    assert costs["mopoe"]["train"]["vs_mopoe"] == 1.0
    assert list(costs["jnf_dcca"]) == ["dcca", "joint", "unimodal", "training_mean"]
    for stages in costs.values():
        for cost in stages.values():
            assert positive(cost["step_s"]) and positive(cost["vs_mopoe"])
            assert cost["vs_mopoe"] == pytest.approx(cost["step_s"] / costs["mopoe"]["train"]["step_s"])
    markdown = out.with_suffix(".md").read_text()
    assert "## Latent accuracy per subset" in markdown and "## Train-step cost" in markdown and "n/a" in markdown


def check_train_step(result: dict, out: Path) -> None:
    assert result.get("dataset", "polymnist") in ("polymnist", "celeba")
    for key in ("samples_per_s", "bare_samples_per_s", "ceiling_fraction", "bare_ceiling_fraction", "model_vs_bare",
                "model_vs_bare_cpu", "ceiling_fraction_cpu", "matmul_gflops"):
        assert positive(result[key]), (key, result[key])
    # The rates are printed to 0.1 samples/s and the ratio to 4 decimals, so at smoke size (a few samples/s on
    # CelebA) the ratio of the printed rates can differ from the printed ratio by more than 1 %: check that the
    # ratio lies within what the rounded rates allow.
    model, bare, half = result["samples_per_s"], result["bare_samples_per_s"], 0.05
    low, high = (model - half) / (bare + half), (model + half) / max(bare - half, 1e-9)
    assert low - 5e-5 <= result["model_vs_bare"] <= high + 5e-5, (result["model_vs_bare"], model, bare)
    # The model is the bare networks plus the multimodal machinery: never less arithmetic.
    assert result["flop_per_sample"] >= result["bare_flop_per_sample"] > 0


CHECKS: dict[str, Callable[[dict, Path], None]] = {
    "aim_scale": check_aim_scale,
    "aggregator_cost": check_aggregator_cost,
    "asha_efficiency": check_asha_efficiency,
    "celeba_data": check_celeba_data,
    "cub_data": check_cub_data,
    "component_selection": check_component_selection,
    "data_reader": check_data_reader,
    "evaluation": check_evaluation,
    "families_comparison": check_families_comparison,
    "fault_matrix": check_fault_matrix,
    "latent_emergence": check_latent_emergence,
    "prd_agreement": check_prd_agreement,
    "thesis_comparison": check_thesis_comparison,
    "train_step": check_train_step,
}


# ---------------------------------------------------------------- the test


def test_helper_finds_the_last_json_object():
    stdout = 'building {shards}\n{"benchmark": "a"}\nprogress\n{"benchmark": "b", "x": [1, {"y": 2}]}\n(Ray) bye\n'
    assert last_json_object(stdout) == {"benchmark": "b", "x": [1, {"y": 2}]}
    with pytest.raises(AssertionError):
        last_json_object("no json here\n{not json\n")


def test_every_benchmark_has_checks():
    assert BENCHMARKS, "no benchmarks found"
    assert {path.stem for path in BENCHMARKS} == set(CHECKS), "add the new benchmark's checks to CHECKS"


VARIANTS: dict[str, dict[str, list[str]]] = {
    # What a machine without Chromium records (the default run loads the pages where Chromium is).
    "aim_scale": {"no_chromium": ["--chromium", "none", "--long-epochs", "0"]},
    "train_step": {"celeba": ["--dataset", "celeba"]},
    "thesis_comparison": {"learns": ["--setting", "learns"]},
}
"""Further smoke runs of a benchmark with these arguments (a mode the default run does not take)."""

RUNS = [(path, []) for path in BENCHMARKS] + [
    (REPO / "benchmarks" / f"{stem}.py", arguments) for stem, variants in VARIANTS.items() for arguments in variants.values()
]
RUN_IDS = [path.stem for path in BENCHMARKS] + [
    f"{stem}-{variant}" for stem, variants in VARIANTS.items() for variant in variants
]


@pytest.mark.parametrize(("script", "arguments"), RUNS, ids=RUN_IDS)
def test_benchmark_smoke(script: Path, arguments: list[str], tmp_path: Path, request: pytest.FixtureRequest):
    env = {key: value for key, value in os.environ.items() if key not in LOCATION_ENV}
    if uses_ray(script):
        env.update(request.getfixturevalue("ray_cluster").client_env())
    out = tmp_path / "out" / f"{script.stem}.json"
    before = results_snapshot(script.stem)
    completed = subprocess.run(
        [sys.executable, str(script), "--smoke", *arguments, "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, (
        f"exit status {completed.returncode}\nstdout (end):\n{completed.stdout[-3000:]}\n"
        f"stderr (end):\n{completed.stderr[-6000:]}"
    )
    result = last_json_object(completed.stdout)
    assert result["benchmark"] == script.stem
    assert out.is_file(), f"nothing written at --out {out}"
    written = json.loads(out.read_text())
    assert json.dumps(written, sort_keys=True) == json.dumps(result, sort_keys=True)
    assert results_snapshot(script.stem) == before, "a smoke run with --out wrote under benchmarks/results/"
    CHECKS[script.stem](result, out)
