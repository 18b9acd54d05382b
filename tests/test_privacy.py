"""Credentialed data stays inside the training: a restricted dataset's trainings track their
aggregate metrics in Aim but no image and no text, unless the user turns that on explicitly.

The data is the CUB fixture (images and captions) with its manifests marked ``restricted``, as the
MIMIC-CXR builder marks its own: the switch reads the manifest, not the dataset's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmplatform.config import build_config
from mmplatform.tracking import query_images, query_metrics, query_runs, query_texts, reindex


@pytest.fixture(scope="module")
def restricted_shards(cub_shards, tmp_path_factory) -> Path:
    root = Path(shutil.copytree(cub_shards, tmp_path_factory.mktemp("restricted") / "cub"))
    for split in ("train", "test"):
        path = root / split / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "restricted": True}))
    return root


def _train(shards: Path, tmp_path: Path, name: str, log_restricted_samples: bool) -> Path:
    from mmplatform.training.launcher import fit

    repo = tmp_path / "aim"
    fit(build_config({
        "name": name,
        "storage_path": str(tmp_path / "results"),
        "data": {"dataset": "cub", "path": str(shards), "batch_size": 8, "steps_per_epoch": 1, "loader_workers": 0,
                 "eval_batch_size": 20},
        "model": {"aggregator": "mopoe", "latent_dim": 4, "networks": {"image": "mlp_image"}},
        "training": {"epochs": 1},
        # No classifiers needed: what matters is what the tracker receives.
        "evaluation": {"metrics": ["log_likelihood"], "objective_weights": {"log_likelihood": 1.0},
                       "log_likelihood_samples": 2},
        "scaling": {"num_workers": 1},
        "tracking": {"repo": str(repo), "experiment": "privacy", "fallback_dir": str(tmp_path / "fallback"),
                     "log_restricted_samples": log_restricted_samples},
    }))
    reindex(repo)
    return repo


def test_a_restricted_training_tracks_metrics_but_no_image_and_no_text(ray_cluster, restricted_shards, tmp_path):
    repo = _train(restricted_shards, tmp_path, "restricted", log_restricted_samples=False)
    assert query_metrics(repo, 'metric.name == "log_likelihood"')  # aggregates are tracked
    assert query_images(repo, "") == [] and query_texts(repo, "") == []
    (run,) = query_runs(repo)
    assert run.hparams["samples_logged"] is False


def test_the_explicit_switch_logs_them_and_the_queries_would_see_a_leak(ray_cluster, restricted_shards, tmp_path):
    """The same training with ``tracking.log_restricted_samples: true``: the image grids and the
    decoded captions are there, so the empty queries above are not empty by construction."""
    repo = _train(restricted_shards, tmp_path, "opted-in", log_restricted_samples=True)
    assert {series.context["modality"] for series in query_images(repo, "")} == {"image"}
    assert {series.context["modality"] for series in query_texts(repo, "")} == {"text"}
    (run,) = query_runs(repo)
    assert run.hparams["samples_logged"] is True
