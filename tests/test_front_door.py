"""The newcomer's path: ``python -m mmplatform``, one-line user errors, the classifier gate,
the sweep's closing table, readable Aim names, and ``make run``'s own path on an empty data root.

The last test walks what ``make run`` does (``sweeps/polymnist_fmean.py`` with the ``local``
profile): it builds the full offline PolyMNIST-3 into an empty data root, trains the coherence
classifiers against the profile's real gate (not the smoke profile's 0.0), and runs one short
trial through the same script, on the session's Ray cluster instead of an embedded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmplatform.sweep.report import trials_table
from mmplatform.tracking import query_runs, reindex

REPO = Path(__file__).resolve().parent.parent
SWEEP_SCRIPT = REPO / "sweeps" / "polymnist_fmean.py"
NOUNS = ("classifiers", "data", "tracking", "train")


def _has_own_traceback(stderr: str) -> bool:
    """A traceback of the command itself; Ray's actors' log lines (prefixed ``(Actor pid=...)``)
    may carry tracebacks of Ray's own transient warnings on a loaded machine."""
    return any(line.startswith("Traceback") for line in stderr.splitlines())


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- python -m, user errors


@pytest.mark.parametrize("module", ["mmplatform", "mmplatform.cli"])
def test_python_dash_m_runs_the_cli(module):
    completed = _run([sys.executable, "-m", module, "--help"])
    assert completed.returncode == 0, completed.stderr
    assert all(noun in completed.stdout for noun in NOUNS)
    # A sub-command really runs (the old `python -m mmplatform.cli` parsed nothing and exited 0).
    completed = _run([sys.executable, "-m", module, "data", "--help"])
    assert completed.returncode == 0 and "polymnist" in completed.stdout


@pytest.mark.parametrize("module", ["mmplatform", "mmplatform.cli"])
def test_a_bad_config_value_is_one_line_naming_the_field(module, tmp_path):
    completed = _run([sys.executable, "-m", module, "train", "model.beta=-1"],
                     env={"MMPLATFORM_DATA_ROOT": str(tmp_path)})
    assert completed.returncode == 2
    assert not _has_own_traceback(completed.stderr)
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmplatform: error: ") and "model.beta" in lines[0]


def test_a_missing_dataset_is_one_line_naming_the_path(tmp_path):
    completed = _run([sys.executable, "-m", "mmplatform", "train", f"data.path={tmp_path / 'nowhere'}"])
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert str(tmp_path / "nowhere") in completed.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- the closing table


def test_trials_table_ranks_by_objective_and_shows_the_headline_metrics():
    searched = ["model.beta", "model.aggregator", "model.aggregator_options.num_flows"]
    trials = [
        {"trial_id": "t_err", "status": "error", "epoch": None, "config": {"model.aggregator": "iwmogfm"},
         "objective": None},
        {"trial_id": "t_low", "status": "stopped_early", "epoch": 1, "objective": 0.11, "latent_accuracy": 0.2,
         "coherence_missing": 0.1, "prd": 0.05,
         "config": {"model.beta": 2.0, "model.aggregator": "mofop", "model.aggregator_options.num_flows": 2}},
        {"trial_id": "t_high", "status": "finished", "epoch": 9, "objective": 0.42, "latent_accuracy": 0.71,
         "coherence_missing": 0.35, "prd": 0.3,
         "config": {"model.beta": 0.5, "model.aggregator": "mopgfm", "model.aggregator_options.num_flows": 1}},
    ]
    lines = trials_table(trials, searched).splitlines()
    header = lines[0].split()
    assert header[:3] == ["rank", "trial", "method"] and "num_flows" in header and "beta" in header
    assert "latent" in header and "PRD" in header and header[-2:] == ["epochs", "status"]
    # Only the metrics the trials report: no multi-label (AP) or log-likelihood columns here.
    assert "AP" not in header and "log" not in header
    assert [line.split()[1] for line in lines[1:]] == ["t_high", "t_low", "t_err"]
    best = lines[1].split()
    assert best[0] == "1" and best[2] == "mopgfm" and "0.420" in best and "0.710" in best and best[-1] == "finished"
    assert lines[3].split()[-1] == "error"
    # A trial of another model family is named by its family, and the family is no column of its own.
    families = [{"trial_id": "t_jnf", "status": "finished", "epoch": 3, "objective": 0.3,
                 "config": {"model.aggregator": "mopoe", "model.family": "jnf"}},
                {"trial_id": "t_mopoe", "status": "finished", "epoch": 3, "objective": 0.2,
                 "config": {"model.aggregator": "mopoe", "model.family": "aggregator"}}]
    lines = trials_table(families, ["model.aggregator", "model.family"]).splitlines()
    assert "family" not in lines[0].split() and [line.split()[2] for line in lines[1:]] == ["jnf", "mopoe"]


def test_a_trial_is_named_for_people_in_aim():
    from mmplatform.sweep.config import build_sweep_config
    from mmplatform.sweep.search_space import Choice

    sweep = build_sweep_config({
        "name": "polymnist_fmean-local",
        "base": {"model": {"aggregator": "mopoe"}},
        "search_space": {"model.aggregator": Choice(values=["mofop", "mopgfm"]).model_dump()},
    })
    config = sweep.trial_config({"model.aggregator": "mopgfm"}, "a1b2_00003")
    assert config.tracking.experiment == "polymnist_fmean-local"
    assert config.tracking.run_name == "polymnist_fmean-local/a1b2_00003 mopgfm"
    assert config.flat_hparams()["sweep"] == "polymnist_fmean-local"  # the README's queries still hold


def test_the_local_profile_samples_the_cheap_aggregators_unless_asked():
    from mmplatform.config import ConfigError
    from mmplatform.sweep.profiles import PROFILES
    from mmplatform.sweep.script import parse_args, sampled_aggregators
    from sweeps.polymnist_baselines import STUDY as BASELINES
    from sweeps.polymnist_fmean import STUDY

    def sampled(study, *argv):
        args = parse_args(study, list(argv))
        return sampled_aggregators(study, PROFILES[args.profile](study, args), args)

    assert sampled(STUDY) == ["mopgfm"]
    assert sampled(STUDY, "--profile", "cluster") == list(STUDY.aggregators)
    assert sampled(STUDY, "--aggregators", "iwmogfm,mofop") == ["iwmogfm", "mofop"]
    assert sampled(BASELINES) == list(BASELINES.aggregators)  # nothing excluded there
    with pytest.raises(ConfigError, match=r"--aggregators: \['mopoe'\] not in the study polymnist_fmean"):
        sampled(STUDY, "--aggregators", "mopoe")


# ---------------------------------------------------------------- the classifier gate


def _classifiers_cli(shards: Path, out: Path, cluster, *options: str) -> subprocess.CompletedProcess:
    return _run([str(Path(sys.executable).parent / "mmplatform"), "classifiers", "train", "--data", str(shards),
                 "--out", str(out), "--batch-size", "16", *options], env=cluster.client_env(), timeout=600)


def test_classifiers_stop_at_the_gate_and_show_progress(ray_cluster, polymnist_shards, tmp_path):
    completed = _classifiers_cli(polymnist_shards, tmp_path / "clf", ray_cluster, "--min-score", "0",
                                 "--max-epochs", "5")
    assert completed.returncode == 0, completed.stderr[-3000:]
    shown = completed.stdout + completed.stderr  # Ray forwards the workers' log lines to either
    assert shown.count("coherence classifiers epoch 1/5: test accuracy m0=") == 1
    assert "epoch 2/5" not in shown  # every modality passed a 0 gate at once
    stored = json.loads((tmp_path / "clf" / "classifiers.json").read_text())
    assert stored["epochs_trained"] == 1 and stored["training"]["min_score"] == 0.0


def test_classifiers_that_cannot_pass_fail_in_one_line_with_the_command_that_trains_more(
    ray_cluster, polymnist_shards, tmp_path
):
    # 60 tuples and 2 epochs cannot reach a perfect test accuracy.
    completed = _classifiers_cli(polymnist_shards, tmp_path / "clf", ray_cluster, "--min-score", "1",
                                 "--max-epochs", "2")
    assert completed.returncode == 2
    assert not _has_own_traceback(completed.stderr)
    assert "epoch 2/2" in completed.stdout + completed.stderr  # trained to the cap, showing progress
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("mmplatform: error: coherence classifier for m")
    assert "reached test accuracy 0." in error and "after 2 epochs" in error
    assert f"mmplatform classifiers train --data {polymnist_shards} --max-epochs 4 --min-score 1" in error
    assert f"--out {tmp_path / 'clf'}" in error
    # Nothing is lost: what was trained is stored with its measured accuracy.
    stored = json.loads((tmp_path / "clf" / "classifiers.json").read_text())
    assert stored["epochs_trained"] == 2 and min(stored["test_score"].values()) < 1.0
    weakest = min(stored["test_score"], key=stored["test_score"].get)
    assert error.startswith(f"mmplatform: error: coherence classifier for {weakest} ")


# ---------------------------------------------------------------- make run's path


def test_make_run_path_on_an_empty_data_root(ray_cluster, tmp_path):
    """The local profile's own preparation (full offline PolyMNIST-3, classifiers through the
    real gate) and one short trial through ``sweeps/polymnist_fmean.py``, as ``make run``."""
    from mmplatform.sweep.profiles import PROFILES
    from mmplatform.sweep.script import parse_args
    from sweeps.polymnist_fmean import STUDY

    from mmplatform.config import build_config

    local = PROFILES["local"](STUDY, parse_args(STUDY, []))
    gate = build_config(local.base).evaluation.min_classifier_score
    assert gate >= 0.8  # the real gate (the dataset's), not the smoke profile's 0.0

    root = tmp_path / "root"
    completed = _run(
        [sys.executable, str(SWEEP_SCRIPT), "--profile", "local", "--name", "front-door", "--num-samples", "1",
         "--max-epochs", "1", "--steps-per-epoch", "5", "--search-seed", "0"],
        env={**ray_cluster.client_env(), "MMPLATFORM_DATA_ROOT": str(root)}, timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    out = completed.stdout
    assert "building polymnist shards" in out and "coherence classifiers epoch 1/" in out + completed.stderr

    accuracy = json.loads((root / "datasets" / "polymnist" / "classifiers" / "classifiers.json").read_text())
    assert min(accuracy["test_score"].values()) >= gate

    assert "sweep front-door: 1 trials (1 finished)" in out
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("rank  trial"))
    row = lines[header + 1].split()
    assert row[0] == "1" and row[2] in STUDY.aggregators and row[-1] == "finished"
    best_file = root / "ray_results" / "front-door" / "best_trial.json"
    assert f"best trial (config, all metrics, checkpoint): {best_file}" in out
    assert f"aim up --repo {root / 'aim'}" in out
    summary = json.loads(best_file.read_text())
    trial = summary["trials"][0]
    assert 0.0 <= trial["latent_accuracy"] <= 1.0 and 0.0 <= trial["coherence_missing"] <= 1.0
    assert len(summary["best"]["metrics"]) > 20  # the full metrics stay in the file, not on screen
    assert len(lines) - header < 10  # ... and the table stays compact

    reindex(root / "aim")
    runs = query_runs(root / "aim", 'run.hparams.sweep == "front-door"')
    assert len(runs) == 1
    assert runs[0].experiment == "front-door"
    # The README's query by experiment finds the same run.
    assert [run.run_hash for run in query_runs(root / "aim", 'run.experiment == "front-door"')] == [runs[0].run_hash]
    assert runs[0].name == f"front-door/{trial['trial_id']} {row[2]}"
