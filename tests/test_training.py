"""One training on a real local Ray cluster (2 CPU workers, gloo) with a real Aim server.

Covers: metrics and image grids reaching Aim with their contexts, checkpoints, a worker
lost mid-training (Ray Train restarts the group from the last checkpoint and the same Aim
run continues without duplicated steps), an unreachable Aim server (training finishes, the
metrics are recoverable), divergence, and the coherence-classifier gate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmplatform.coherence_classifiers import ClassifierError, save_classifiers
from mmplatform.config import build_config
from mmplatform.tracking import query_images, query_metrics, query_runs, reindex, replay_fallback
from tests.aim_fixtures import free_port


@pytest.fixture(scope="session")
def polymnist_classifiers(ray_cluster, polymnist_shards, tmp_path_factory) -> Path:
    """Coherence classifiers trained by the real CLI on the cluster (one epoch: tiny data)."""
    out = tmp_path_factory.mktemp("classifiers") / "polymnist"
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "mmplatform"), "classifiers", "train", "--data", str(polymnist_shards),
         "--out", str(out), "--max-epochs", "1", "--min-score", "0", "--batch-size", "16"],
        env={**os.environ, **ray_cluster.client_env()}, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Ray streams worker log lines to stdout too; the report is the JSON block printed last.
    report = json.loads(completed.stdout[[m.start() for m in re.finditer(r"^\{", completed.stdout, re.M)][-1]:])
    assert set(report["test_score"]) == {"m0", "m1", "m2"}
    assert all(0.0 <= value <= 1.0 for value in report["test_score"].values())
    assert (out / "classifiers.pt").exists() and (out / "classifiers.json").exists()
    return out


def tiny_config(tmp_path: Path, shards: Path, classifiers: Path, repo: str, **sections):
    tree = {
        "name": "tiny",
        "storage_path": str(tmp_path / "results"),
        "data": {"path": str(shards), "batch_size": 8, "steps_per_epoch": 3, "loader_workers": 0,
                 "eval_batch_size": 32},
        "model": {"aggregator": "mopoe", "latent_dim": 8},
        "training": {"epochs": 2},
        "evaluation": {"classifiers_dir": str(classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 20, "random_coherence_samples": 16, "log_likelihood_samples": 2,
                       "prd_clusters": 4, "prd_angles": 51, "prd_runs": 1},
        "scaling": {"num_workers": 2},
        "tracking": {"repo": repo, "experiment": "tests", "fallback_dir": str(tmp_path / "fallback")},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    return build_config(tree)


def _steps(series, name, **context):
    matches = [s for s in series if s.name == name and all(s.context.get(k) == v for k, v in context.items())]
    assert matches, f"no series {name} {context}"
    return matches


def test_lost_worker_resumes_from_checkpoint_into_the_same_aim_run(
    ray_cluster, polymnist_shards, polymnist_classifiers, aim_server, tmp_path
):
    from mmplatform.training.launcher import fit

    config = tiny_config(
        tmp_path, polymnist_shards, polymnist_classifiers, aim_server.url,
        name="lost-worker", training={"epochs": 3, "max_failures": 2}, data={"steps_per_epoch": 12},
    )
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", fit(config)))
    runner.start()

    # Kill a training worker once the first checkpoint exists: Ray Train must restart the
    # worker group from it (FailureConfig) and continue with the next epoch.
    first_checkpoint = tmp_path / "results" / "lost-worker" / "checkpoint_epoch=0001"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_checkpoint.exists(), "no checkpoint after epoch 1"
    workers = ray_cluster.worker_processes("RayTrainWorker")
    assert workers, "no training worker to kill"
    workers[0].kill()
    runner.join(timeout=600)
    result = outcome["result"]

    assert result.error is None
    assert result.metrics["epoch"] == 3 and result.metrics["status"] == "finished"
    checkpoints = sorted(p.name for p in (tmp_path / "results" / "lost-worker").glob("checkpoint_epoch=*"))
    assert checkpoints[-1] == "checkpoint_epoch=0003"

    reindex(aim_server.url)
    runs = query_runs(aim_server.url, 'run.hparams.run_name == "lost-worker"')
    assert len(runs) == 1, "the restarted workers must re-attach to the run, not fork a new one"
    run = runs[0]
    assert run.hparams["aggregator"] == "mopoe" and run.summary["status"] == "finished"

    series = query_metrics(aim_server.url, f'run.hash == "{run.run_hash}"')
    for loss in _steps(series, "loss", split="train"):
        assert loss.steps == [1, 2, 3], "every epoch exactly once, none duplicated by the restart"
    # Per-modality terms: one name, the modality in the context (not "nll/m0").
    assert {s.context["modality"] for s in _steps(series, "nll", split="train")} == {"m0", "m1", "m2"}
    assert not any(s.name.startswith("nll/") for s in series)
    (missing,) = _steps(series, "coherence", kind="missing", split="test")
    assert missing.steps == [1, 2, 3] and all(0.0 <= v <= 1.0 for v in missing.values)
    # The (subset, modality) pairs it averages are in the Train result, not in Aim (pair_breakdowns off).
    assert 0.0 <= result.metrics["coherence_missing/m0/m1"] <= 1.0
    assert not [s for s in series if "subset" in s.context and "modality" in s.context]
    for name in ("latent_accuracy", "prd", "log_likelihood", "objective"):
        assert _steps(series, name)
    images = query_images(aim_server.url, f'run.hash == "{run.run_hash}" and images.name == "generations"')
    assert {(s.context["kind"], s.context["modality"]) for s in images} >= {("conditional", "m0"), ("random", "m2")}


def test_unreachable_aim_server_loses_nothing(ray_cluster, polymnist_shards, polymnist_classifiers, tmp_path):
    from mmplatform.training.launcher import fit

    dead = f"aim://127.0.0.1:{free_port()}"  # nobody listens there
    config = tiny_config(tmp_path, polymnist_shards, polymnist_classifiers, dead, name="aim-down",
                         scaling={"num_workers": 1})
    result = fit(config)
    assert result.error is None and result.metrics["status"] == "finished"

    recovered = tmp_path / "recovered"
    replayed = replay_fallback(tmp_path / "fallback", recovered)
    assert len(replayed) == 1 and replayed[0].pushed > 0
    reindex(recovered)
    series = query_metrics(recovered, 'metric.name == "loss"')
    assert [s.steps for s in series] == [[1, 2]]
    assert query_runs(recovered)[0].hparams["run_name"] == "aim-down"


def test_a_diverging_training_ends_as_diverged(ray_cluster, polymnist_shards, polymnist_classifiers, tmp_path):
    from mmplatform.training.launcher import fit

    # A learning rate of 1e12 sends Adam's first step to ~1e12-sized weights: the decoder
    # overflows and every later gradient is non-finite.
    config = tiny_config(
        tmp_path, polymnist_shards, polymnist_classifiers, str(tmp_path / "aim"), name="diverging",
        training={"epochs": 3, "learning_rate": 1e12, "max_bad_steps": 2}, scaling={"num_workers": 1},
        data={"steps_per_epoch": 6},
    )
    result = fit(config)
    assert result.error is None
    assert result.metrics["status"] == "diverged"
    assert result.metrics["epoch"] == 1 and result.metrics["bad_steps"] == 2
    assert result.metrics["objective"] == 0.0


def test_classifiers_below_the_bar_or_unmeasured_are_refused(polymnist_shards, tmp_path):
    import torch

    from mmplatform.coherence_classifiers import ClassifierSettings, _classifier_bank
    from mmplatform.training.launcher import preflight
    from data_pipelines.manifest import load_manifest

    config = tiny_config(tmp_path, polymnist_shards, tmp_path / "none", "unused",
                         evaluation={"min_classifier_score": 0.9})
    with pytest.raises(ClassifierError, match="mmplatform classifiers train"):
        preflight(config)

    manifest = load_manifest(polymnist_shards / "train")
    weak = {"m0": 0.95, "m1": 0.5, "m2": 0.97}
    save_classifiers(_classifier_bank(manifest), manifest, "accuracy", weak, ClassifierSettings(), tmp_path / "weak",
                     epochs_trained=1)
    config = tiny_config(tmp_path, polymnist_shards, tmp_path / "weak", "unused",
                         evaluation={"min_classifier_score": 0.9})
    with pytest.raises(ClassifierError, match=r"min_classifier_score=0.9 \(test accuracy\): m1=0.500"):
        preflight(config)
    # Without coherence or PRD no classifier is needed.
    preflight(tiny_config(tmp_path, polymnist_shards, tmp_path / "weak", "unused",
                          evaluation={"min_classifier_score": 0.9, "metrics": ["latent_probe"]}))
    assert torch.load(tmp_path / "weak" / "classifiers.pt", weights_only=True).keys() == {"m0", "m1", "m2"}
