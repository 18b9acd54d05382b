"""Where data, results and tracking live.

Everything generated sits under one data root outside the repository, so that
``ray job submit --working-dir .`` never uploads it. On a cluster each location is
overridden by the environment the Kubernetes manifests set (k8s/), and the sweep's
cluster profile reads the same variables through these functions.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "MMPLATFORM_DATA_ROOT"
"""Root of everything generated on a laptop: datasets, Ray results, the local Aim repo."""

DATASETS_DIR_ENV = "MMPLATFORM_DATASETS_DIR"
"""Shards (read by every Ray worker); a shared read-write-many volume on a cluster."""

RESULTS_DIR_ENV = "MMPLATFORM_RESULTS_DIR"
"""Ray Train/Tune ``storage_path``: checkpoints and trial results, shared on a cluster."""

AIM_REPO_ENV = "MMPLATFORM_AIM_REPO"
"""A local Aim repo path, or ``aim://host:53800`` for the cluster's Aim server."""

CLASSIFIERS_SUBDIR = "classifiers"
"""A dataset's coherence classifiers live in ``<dataset dir>/classifiers`` unless configured."""

DEFAULT_DATA_ROOT = Path.home() / ".cache" / "mmplatform"


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)).expanduser()


def datasets_dir() -> Path:
    return Path(os.environ.get(DATASETS_DIR_ENV, data_root() / "datasets")).expanduser()


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_DIR_ENV, data_root() / "ray_results")).expanduser()


def aim_repo() -> str:
    """The Aim repo as Aim's ``Run(repo=...)`` takes it: a path or an ``aim://`` URL."""
    return os.environ.get(AIM_REPO_ENV, str(data_root() / "aim"))


def dataset_dir(name: str) -> Path:
    return datasets_dir() / name


# Cluster contract, shared with k8s/ (tests/test_k8s.py checks that the manifests agree):
TRIAL_DRIVER_RESOURCE = "trial_driver"
"""Ray custom resource each Tune trial driver requests, so drivers run on the small CPU
group of the RayCluster and never occupy a GPU node."""

AIM_TRACKING_PORT = 53800
AIM_UI_PORT = 43800

CLUSTER_MAX_GPUS_ENV = "MMPLATFORM_CLUSTER_MAX_GPUS"
"""GPUs the cluster can scale up to (GPU group maxReplicas x GPUs per pod). An autoscaled
cluster shows no GPUs while idle, so sweeps size their concurrency and check their trials
against this instead."""


def cluster_max_gpus() -> float | None:
    value = os.environ.get(CLUSTER_MAX_GPUS_ENV)
    return float(value) if value else None
