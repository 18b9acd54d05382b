"""Exact resumption: a training killed after epoch k and resumed ends as the uninterrupted one.

A small PolyMNIST training (MoPoE, 4 epochs of 4 steps, evaluation every 2 epochs, one CPU
worker, one torch thread, loader_workers 0) runs once uninterrupted; then the same training
is interrupted after epoch 2, where the ``MMPLATFORM_TEST_HOOKS`` hook pauses rank 0 once its
checkpoint is reported, and either

- its Train worker is SIGKILLed (Ray Train restarts the worker group from the checkpoint,
  ``training.max_failures``), or
- the process driving ``fit`` (``mmplatform train --config ...``) is SIGKILLed and the same
  command is run again (the same ``name`` resumes).

Compared by value, bitwise (CPU, one thread): model parameters, Adam state, the guard and the
RNG states in every epoch's checkpoint, every reported metric of every epoch (loss terms,
coherence, latent probe, log-likelihood, the objective, carried through epoch 3 which has no
evaluation), and every value of the Aim run. The hook's start events prove that the
interrupted training resumed at epoch 3 rather than training again from epoch 1, which a
deterministic training would also end in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmplatform.config import build_config
from mmplatform.tracking import query_metrics, query_runs, reindex
from mmplatform.training.checkpointing import TrainingState
from mmplatform.training.test_hooks import HOOKS_ENV
from tests.fault_fixtures import alive

EPOCHS, KILLED_AFTER = 4, 2
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def untrained_classifiers(polymnist_shards, tmp_path_factory) -> Path:
    """Coherence classifiers as the platform stores them, untrained (coherence values are then
    meaningless but deterministic, which is all this test needs; training them costs a minute)."""
    from data_pipelines.manifest import load_manifest
    from mmplatform.coherence_classifiers import ClassifierSettings, _classifier_bank, save_classifiers

    out = tmp_path_factory.mktemp("resumption-classifiers") / "classifiers"
    manifest = load_manifest(polymnist_shards / "train")
    torch.manual_seed(0)
    save_classifiers(_classifier_bank(manifest), manifest, "accuracy", {"m0": 1.0, "m1": 1.0, "m2": 1.0},
                     ClassifierSettings(), out, epochs_trained=1)
    return out


def config_tree(root: Path, shards: Path, classifiers: Path, name: str) -> dict:
    return {
        "name": name,
        "storage_path": str(root / "results"),
        "data": {"path": str(shards), "batch_size": 8, "steps_per_epoch": 4, "loader_workers": 0,
                 "eval_batch_size": 32},
        "model": {"aggregator": "mopoe", "latent_dim": 8},
        "training": {"epochs": EPOCHS, "seed": 5, "max_failures": 1, "checkpoints_to_keep": EPOCHS},
        # Epoch 3 has no evaluation: it reports the objective of epoch 2, carried across the resume.
        "evaluation": {"every_n_epochs": 2, "metrics": ["coherence", "latent_probe", "log_likelihood"],
                       "objective_weights": {"coherence_missing": 1.0, "latent_accuracy": 1.0},
                       "classifiers_dir": str(classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 20, "random_coherence_samples": 16, "log_likelihood_samples": 3},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1.0},
        "tracking": {"repo": str(root / "aim"), "experiment": "resumption", "fallback_dir": str(root / "fallback")},
    }


def run_dir(tree: dict) -> Path:
    return Path(tree["storage_path"]) / tree["name"]


def checkpoint_states(tree: dict) -> dict[int, TrainingState]:
    directory = run_dir(tree)
    states = {epoch: TrainingState.load(directory / f"checkpoint_epoch={epoch:04d}") for epoch in range(1, EPOCHS + 1)}
    assert [state.epoch for state in states.values()] == list(range(1, EPOCHS + 1))
    return states


def aim_values(tree: dict) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    repo = tree["tracking"]["repo"]
    reindex(repo)
    (run,) = query_runs(repo, f'run.hparams.run_name == "{tree["name"]}"')
    return {(series.name, json.dumps(series.context, sort_keys=True)): (series.steps, series.values)
            for series in query_metrics(repo, f'run.hash == "{run.run_hash}"')}


def differences(actual, expected, where: str) -> list[str]:
    """Where ``actual`` and ``expected`` differ: structure, and every tensor bitwise
    (``torch.equal``), every number with ``==``."""
    if isinstance(expected, torch.Tensor):
        if not (isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype and actual.shape == expected.shape):
            return [f"{where}: {type(actual).__name__} vs tensor {expected.dtype} {tuple(expected.shape)}"]
        if torch.equal(actual, expected):
            return []
        if expected.is_floating_point():
            return [f"{where}: max |diff| {(actual - expected).abs().max():.3g}"]
        return [f"{where}: {int((actual != expected).sum())} of {expected.numel()} elements differ"]
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            return [f"{where}: keys {sorted(set(actual) ^ set(expected))} not in both"]
        return [d for key in expected for d in differences(actual[key], expected[key], f"{where}.{key}")]
    if isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            return [f"{where}: length {len(actual)} vs {len(expected)}"]
        if all(isinstance(item, (int, float, str)) for item in expected):  # e.g. Python's RNG state
            unequal = sum(a != e for a, e in zip(actual, expected))
            return [f"{where}: {unequal} of {len(expected)} items differ"] if unequal else []
        return [d for i, (a, e) in enumerate(zip(actual, expected)) for d in differences(a, e, f"{where}[{i}]")]
    if hasattr(expected, "shape"):  # numpy arrays (numpy's RNG state)
        return [] if (actual == expected).all() else [f"{where}: arrays differ"]
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def assert_same_training(resumed: dict, reference: dict) -> None:
    got, expected = checkpoint_states(resumed), checkpoint_states(reference)
    found = []
    for epoch in range(1, EPOCHS + 1):
        for part in ("model", "optimizer", "guard", "rng_states", "status", "last_objective", "metrics"):
            where = f"epoch {epoch} {part}"
            unequal = differences(getattr(got[epoch], part), getattr(expected[epoch], part), where)
            found += unequal[:3] + ([f"{where}: ... {len(unequal) - 3} more"] if len(unequal) > 3 else [])
    assert not found, "the resumed training differs from the uninterrupted one:\n" + "\n".join(found)
    assert expected[3].metrics["objective"] == expected[2].metrics["objective"] != 0.0
    assert "coherence_missing" not in expected[3].metrics and "coherence_missing" in expected[4].metrics

    got_aim, expected_aim = aim_values(resumed), aim_values(reference)
    assert set(got_aim) == set(expected_aim)
    for key, (steps, values) in expected_aim.items():
        assert got_aim[key] == (steps, values), f"Aim series {key} differs"


def start_events(events_dir: Path) -> list[dict]:
    lines = (events_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def wait_for_pause(events_dir: Path, tree: dict, alive) -> int:
    """The paused worker's pid, once Ray Train has recorded the epoch's checkpoint (what a
    restart resumes from)."""
    pid_file = events_dir / "paused.pid"
    snapshot = run_dir(tree) / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and alive():
        if pid_file.exists() and snapshot.exists() and f"checkpoint_epoch={KILLED_AFTER:04d}" in snapshot.read_text():
            return int(pid_file.read_text())
        time.sleep(0.2)
    raise AssertionError(f"the training did not pause after epoch {KILLED_AFTER}")


@pytest.fixture(scope="module")
def reference(ray_cluster, polymnist_shards, untrained_classifiers, tmp_path_factory) -> dict:
    """The uninterrupted training."""
    from mmplatform.training.launcher import fit

    tree = config_tree(tmp_path_factory.mktemp("reference"), polymnist_shards, untrained_classifiers, "reference")
    result = fit(build_config(tree))
    assert result.error is None and result.metrics["status"] == "finished"
    return tree


def test_a_worker_killed_after_epoch_2_resumes_into_the_same_training(
    ray_cluster, polymnist_shards, untrained_classifiers, reference, tmp_path, monkeypatch
):
    from mmplatform.training.launcher import fit

    tree = config_tree(tmp_path, polymnist_shards, untrained_classifiers, "worker-killed")
    events = tmp_path / "events"
    # Read by the launcher, which forwards it to the Train workers.
    monkeypatch.setenv(HOOKS_ENV, json.dumps({"events_dir": str(events), "pause_after_epoch": KILLED_AFTER}))
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", fit(build_config(tree))))
    runner.start()
    try:
        pid = wait_for_pause(events, tree, runner.is_alive)
        os.kill(pid, signal.SIGKILL)
    finally:
        runner.join(timeout=TIMEOUT_S)
    result = outcome["result"]
    assert result.error is None and result.metrics["status"] == "finished"

    starts = start_events(events)
    assert [event["start_epoch"] for event in starts] == [1, KILLED_AFTER + 1], starts
    assert starts[0]["pid"] == pid != starts[1]["pid"]
    assert_same_training(tree, reference)


def test_a_killed_driver_rerun_resumes_into_the_same_training(
    ray_cluster, polymnist_shards, untrained_classifiers, reference, tmp_path
):
    tree = config_tree(tmp_path, polymnist_shards, untrained_classifiers, "driver-killed")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    events = tmp_path / "events"
    command = [str(Path(sys.executable).parent / "mmplatform"), "train", "--config", str(config_file)]
    env = {**os.environ, **ray_cluster.client_env(), "OMP_NUM_THREADS": "1"}

    paused = {"events_dir": str(events), "pause_after_epoch": KILLED_AFTER}
    driver = subprocess.Popen(command, env={**env, HOOKS_ENV: json.dumps(paused)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        worker_pid = wait_for_pause(events, tree, lambda: driver.poll() is None)
    except AssertionError:
        driver.kill()
        raise AssertionError(f"driver ended early:\n{driver.communicate()[1][-3000:]}") from None
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    # Ray ends the actors of a dead driver's job, the paused worker among them.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and alive(worker_pid):
        time.sleep(0.5)
    assert not alive(worker_pid), "the dead driver's Train worker is still running"

    rerun = subprocess.run(command, env={**env, HOOKS_ENV: json.dumps({"events_dir": str(events)})},
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    starts = start_events(events)
    assert [event["start_epoch"] for event in starts] == [1, KILLED_AFTER + 1], starts
    assert_same_training(tree, reference)
