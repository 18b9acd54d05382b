"""ASHA sweeps as users run them, on the session's real Ray cluster, with local Aim repos.

- the smoke profile in-process: trial count, ASHA stops some trials, stopped trials give
  their resources back (the later trials start and finish), one Aim run per trial;
- restore: a sweep whose driver is killed mid-way continues when re-run with its name;
- ``ray job submit --working-dir <repo> -- python sweeps/polymnist_fmean.py --profile smoke``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmplatform.tracking import query_metrics, query_runs, reindex

REPO = Path(__file__).resolve().parent.parent
SWEEP_SCRIPT = REPO / "sweeps" / "polymnist_fmean.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, ray_cluster):
    """One data root for the module: the smoke dataset and classifiers are built on first use."""
    root = tmp_path_factory.mktemp("sweep-root")
    saved = os.environ.get("MMPLATFORM_DATA_ROOT")
    os.environ["MMPLATFORM_DATA_ROOT"] = str(root)
    yield root
    if saved is None:
        os.environ.pop("MMPLATFORM_DATA_ROOT")
    else:
        os.environ["MMPLATFORM_DATA_ROOT"] = saved


def _sweep_runs(root: Path, sweep: str):
    repo = root / "aim"
    reindex(repo)
    return repo, query_runs(repo, f'run.hparams.sweep == "{sweep}"')


def _assert_one_run_per_trial(root: Path, sweep: str, trials: list[dict]) -> None:
    repo, runs = _sweep_runs(root, sweep)
    assert sorted(run.hparams["trial_id"] for run in runs) == sorted(t["trial_id"] for t in trials)
    epochs = {t["trial_id"]: t["epoch"] for t in trials}
    for run in runs:
        series = query_metrics(repo, f'run.hash == "{run.run_hash}" and metric.name == "loss"')
        assert len(series) == 1
        steps = series[0].steps
        # Every epoch once, in order. A trial that ASHA stops may already have logged the next
        # epoch before the stop reached its workers: Aim then holds one epoch more than Tune.
        assert steps == list(range(1, len(steps) + 1))
        assert epochs[run.hparams["trial_id"]] <= len(steps) <= epochs[run.hparams["trial_id"]] + 1


def test_smoke_sweep_asha_stops_some_and_every_trial_has_its_aim_run(data_root):
    from sweeps.polymnist_fmean import STUDY

    from mmplatform.sweep.script import main

    summary = main(STUDY, ["--profile", "smoke", "--name", "smoke-asha", "--num-samples", "6", "--max-epochs", "2"])
    trials = summary["trials"]
    assert summary["num_trials"] == 6
    # Every trial ran: a leaked placement group of a stopped trial would have starved the next.
    assert all(t["error"] is None and t["epoch"] >= 1 for t in trials)
    # ASHA (reduction factor 3) lets a trial past epoch 1 only if it is in the top third of
    # those recorded there so far: with 6 trials in random order, all passing has p ~ 1%.
    assert any(t["epoch"] < 2 for t in trials), "ASHA stopped no trial at its first rung"
    assert any(t["epoch"] == 2 for t in trials)
    assert summary["best"]["metrics"]["objective"] == max(t["objective"] for t in trials)
    best_file = data_root / "ray_results" / "smoke-asha" / "best_trial.json"
    assert json.loads(best_file.read_text())["best"]["trial_id"] == summary["best"]["trial_id"]

    _assert_one_run_per_trial(data_root, "smoke-asha", trials)
    repo, runs = _sweep_runs(data_root, "smoke-asha")
    aggregators = {run.hparams["aggregator"] for run in runs}
    assert aggregators <= set(STUDY.aggregators)
    # The AimQL users write finds exactly the matching trials.
    wanted = [t for t in runs if t.hparams["aggregator"] == "mopgfm" and t.hparams["beta"] > 1]
    found = query_runs(repo, 'run.hparams.sweep == "smoke-asha" and run.hparams.aggregator == "mopgfm" '
                             'and run.hparams.beta > 1')
    assert sorted(r.run_hash for r in found) == sorted(r.run_hash for r in wanted)


def test_smoke_families_sweep_trains_every_family_with_its_aim_run(data_root):
    from sweeps.polymnist_families import STUDY

    from mmplatform.sweep.script import main

    summary = main(STUDY, ["--profile", "smoke", "--name", "smoke-families", "--num-samples", "1",
                           "--max-epochs", "3", "--grace-period", "3"])
    trials = summary["trials"]
    assert sorted(t["config"]["model.family"] for t in trials) == ["aggregator", "jnf", "jnf_dcca", "mmvm"]
    assert all(t["error"] is None and t["epoch"] == 3 and t["status"] == "finished" for t in trials)
    _assert_one_run_per_trial(data_root, "smoke-families", trials)
    _, runs = _sweep_runs(data_root, "smoke-families")
    assert sorted(run.hparams["family"] for run in runs) == ["aggregator", "jnf", "jnf_dcca", "mmvm"]
    assert all(run.name.endswith(run.hparams["family"] if run.hparams["family"] != "aggregator" else "mopoe")
               for run in runs)


def test_an_interrupted_sweep_continues_without_losing_or_duplicating(data_root, ray_cluster):
    name = "smoke-restore"
    command = [sys.executable, str(SWEEP_SCRIPT), "--profile", "smoke", "--name", name,
               "--num-samples", "3", "--max-epochs", "2"]
    env = {**os.environ, **ray_cluster.client_env(), "MMPLATFORM_DATA_ROOT": str(data_root),
           "MMPLATFORM_SWEEP_SUMMARY": str(data_root / f"{name}.json")}
    experiment = data_root / "ray_results" / name
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Interrupt once the first trial has reported an epoch, mid-sweep.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if any(p.stat().st_size > 0 for p in experiment.glob("*/result.json")):
            break
        time.sleep(0.5)
    assert first.poll() is None, "the sweep finished before it could be interrupted"
    time.sleep(3)  # let Tune snapshot its experiment state once more
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    summary = json.loads((data_root / f"{name}.json").read_text())
    assert summary["num_trials"] == 3
    assert all(t["error"] is None for t in summary["trials"])
    _assert_one_run_per_trial(data_root, name, summary["trials"])


def test_ray_job_submit_runs_the_main_job(data_root, ray_cluster):
    name = "smoke-job"
    runtime_env = {
        "env_vars": {"MMPLATFORM_DATA_ROOT": str(data_root)},
        "excludes": [".venv", ".git", "benchmarks/results"],
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url,
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "sweeps/polymnist_fmean.py", "--profile", "smoke", "--name", name, "--num-samples", "2",
         "--max-epochs", "1"],
        env={**os.environ, **ray_cluster.client_env()}, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", completed.stdout), completed.stdout[-2000:]
    _, runs = _sweep_runs(data_root, name)
    assert len(runs) == 2
