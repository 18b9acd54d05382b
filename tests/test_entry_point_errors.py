"""Config errors from every entry point end in one line naming the field, exit status 2, never a
traceback (issue 16, item 4).

The entry points: ``mmplatform train --config FILE`` (and its overrides), a sweep script
(``python sweeps/polymnist_fmean.py``), and ``ray job submit ... -- python sweeps/polymnist_fmean.py``.
Most cases call the entry point's own ``main`` in this process (a subprocess pays 5-10 s of imports
on 2 cores); there, whatever comes after validation (data preparation, Ray, training) is replaced by
a function that fails the test, so a check that regresses fails at once instead of training. One
case of each entry point runs as a user runs it, in a subprocess, and one job is submitted to the
session's Ray cluster: it fails with exit status 2, and the last line of its logs is the error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SWEEP_SCRIPT = "sweeps/polymnist_fmean.py"
VENV_BIN = Path(sys.executable).parent


def _not_reached(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was reached: the bad value was not refused before it")

    return fail


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- mmplatform train


TRAIN_CASES = {
    "unknown_field": ({"model": {"betta": 1.0}}, [], "model.betta"),
    "out_of_range": ({"model": {"beta": -1}}, [], "model.beta"),
    "wrong_type": ({"data": {"batch_size": "many"}}, [], "data.batch_size"),
    "unknown_aggregator_option": ({"model": {"aggregator": "mopgfm", "aggregator_options": {"num_flowz": 2}}}, [],
                                  "model.aggregator_options: num_flowz"),
    "metric_the_dataset_cannot_score": ({"evaluation": {"metrics": ["latent_probe_ap"]}}, [],
                                        "evaluation.metrics: 'latent_probe_ap'"),
    "negative_seed": ({"training": {"seed": -5}}, [], "training.seed"),
    "override_not_yaml": ({}, ["model.beta=[1"], "override 'model.beta=[1'"),
    "unknown_flag": ({}, ["--epochs", "3"], "unrecognized arguments: --epochs"),
}


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """Past validation, ``mmplatform train`` would start Ray and train: fail the test there instead."""
    from mmplatform.training import launcher

    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(launcher, "ensure_ray", _not_reached("Ray"))
    monkeypatch.setattr(launcher, "build_trainer", _not_reached("the trainer"))


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_mmplatform_train_config_errors(case, polymnist_shards, tmp_path, no_training, capsys):
    from mmplatform.cli import main

    tree, extra, field = TRAIN_CASES[case]
    tree = {**tree, "data": {"path": str(polymnist_shards), **tree.get("data", {})}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tree))  # JSON is YAML
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), *extra])
    assert exit_.value.code == 2
    error = _one_line(capsys.readouterr().err)
    assert error.startswith("mmplatform: error: ") and field in error, error


def test_mmplatform_train_config_file_that_is_a_directory(tmp_path, no_training, capsys):
    from mmplatform.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(tmp_path)])
    assert exit_.value.code == 2
    error = _one_line(capsys.readouterr().err)
    assert error.startswith(f"mmplatform: error: config file {tmp_path} is not readable"), error


def test_mmplatform_train_as_a_user_runs_it(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  betta: 1.0\n")
    completed = subprocess.run([str(VENV_BIN / "mmplatform"), "train", "--config", str(config)], cwd=REPO,
                               env={**os.environ, "MMPLATFORM_DATA_ROOT": str(tmp_path / "root")},
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2, completed.stderr[-3000:]
    error = _one_line(completed.stderr)
    assert error.startswith("mmplatform: error: ") and "model.betta" in error, error


# ---------------------------------------------------------------- the sweep scripts


SWEEP_CASES = {
    "num_samples_zero": (["--num-samples", "0"], "argument --num-samples: must be a positive integer, got 0"),
    "unknown_aggregator": (["--aggregators", "nope"], "--aggregators: ['nope'] not in the study"),
    "max_epochs_zero": (["--max-epochs", "0"], "argument --max-epochs: must be a positive integer, got 0"),
    "max_epochs_not_a_number": (["--max-epochs", "x"], "argument --max-epochs: must be a positive integer, got 'x'"),
    "steps_per_epoch_negative": (["--steps-per-epoch", "-2"], "argument --steps-per-epoch"),
    "negative_gpus": (["--gpus-per-trial", "-1"], "argument --gpus-per-trial"),
    "negative_seed": (["--seed", "-1"], "argument --seed"),
    "unknown_profile": (["--profile", "huge"], "argument --profile: invalid choice: 'huge'"),
}


@pytest.fixture
def no_sweep(monkeypatch, tmp_path):
    """Past validation, a sweep script would prepare data, start Ray and run trials: fail there instead."""
    from mmplatform.sweep import runner, script

    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(script, "cluster_resources", _not_reached("Ray"))
    monkeypatch.setattr(runner, "run_sweep", _not_reached("the sweep"))
    return script


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_script_flag_errors(case, no_sweep, monkeypatch, capsys):
    from sweeps.polymnist_fmean import STUDY

    monkeypatch.setattr(no_sweep, "prepare_dataset", _not_reached("data preparation"))
    argv, field = SWEEP_CASES[case]
    with pytest.raises(SystemExit) as exit_:
        no_sweep.main(STUDY, ["--profile", "smoke", *argv])
    assert exit_.value.code == 2
    error = _one_line(capsys.readouterr().err)
    assert error.startswith("sweeps/polymnist_fmean.py: error: ") and field in error, error


def test_sweep_script_source_that_is_no_release(no_sweep, tmp_path, capsys):
    from sweeps.polymnist_fmean import STUDY

    with pytest.raises(SystemExit) as exit_:
        no_sweep.main(STUDY, ["--profile", "smoke", "--source", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    error = _one_line(capsys.readouterr().err)
    assert error.startswith(f"sweeps/polymnist_fmean.py: error: --source: {tmp_path / 'nowhere'}"), error


def test_sweep_script_as_a_user_runs_it(tmp_path):
    completed = subprocess.run([sys.executable, SWEEP_SCRIPT, "--profile", "smoke", "--num-samples", "0"], cwd=REPO,
                               env={**os.environ, "MMPLATFORM_DATA_ROOT": str(tmp_path), "RAY_ADDRESS": ""},
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2, (completed.stdout + completed.stderr)[-3000:]
    error = _one_line(completed.stderr)
    assert error == ("sweeps/polymnist_fmean.py: error: argument --num-samples: must be a positive integer, "
                     "got 0 (--help shows the usage)"), error
    assert not any(tmp_path.iterdir()), "nothing may be prepared for a sweep that is refused"


# ---------------------------------------------------------------- ray job submit


def test_ray_job_submit_of_a_bad_flag_fails_in_one_line(ray_cluster, tmp_path):
    """One job (submitting is slow): it fails with exit status 2, its logs end in the error line, and
    ``ray job submit`` itself exits non-zero."""
    job_id = f"bad-flag-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **ray_cluster.client_env()}
    runtime_env = {"env_vars": {"MMPLATFORM_DATA_ROOT": str(tmp_path)},
                   "excludes": [".venv", ".git", "benchmarks/results"]}
    submitted = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url, "--submission-id", job_id,
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", SWEEP_SCRIPT, "--profile", "smoke", "--num-samples", "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    shown = submitted.stdout + submitted.stderr
    assert submitted.returncode != 0, shown[-3000:]
    assert f"Job '{job_id}' failed" in shown and "exit code 2" in shown, shown[-3000:]
    logs = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", "--address", ray_cluster.dashboard_url, job_id],
                          env=env, capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "Traceback" not in logs.stdout, logs.stdout[-3000:]
    last = logs.stdout.strip().splitlines()[-1]
    assert last == ("sweeps/polymnist_fmean.py: error: argument --num-samples: must be a positive integer, got 0 "
                    "(--help shows the usage)"), logs.stdout[-3000:]
    assert not any(tmp_path.iterdir()), "nothing may be prepared for a sweep that is refused"
