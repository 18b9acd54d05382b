"""Connect to the Ray cluster in RAY_ADDRESS, or start the embedded local one.

The embedded default serves laptops and tests: a local Ray with the dashboard (Train V2
needs the State API to free a stopped trial's placement group) and more logical CPUs than
cores, because a Tune driver, a Train controller and each worker all ask for one CPU
while mostly waiting on each other.
"""

from __future__ import annotations

import os

import ray

MIN_LOCAL_LOGICAL_CPUS = 8


def local_logical_cpus() -> int:
    return max(MIN_LOCAL_LOGICAL_CPUS, 2 * (os.cpu_count() or 1))


def pin_ray_address() -> None:
    """Worker setup hook: Ray's address auto-detection in a worker finds its own cluster.

    Ray Train's PlacementGroupCleaner opens a State API client without an address; on a
    machine with several Ray instances auto-detection fails ("Found multiple active Ray
    instances"), the placement groups of trials ASHA stops leak and later trials starve.
    """
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def ensure_ray(num_cpus: int | None = None, resources: dict[str, float] | None = None) -> dict:
    """Initialize Ray once per process and return the cluster's resources."""
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            ray.init(
                num_cpus=num_cpus or local_logical_cpus(),
                resources=resources,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                runtime_env={"worker_process_setup_hook": "mmplatform.ray_runtime.pin_ray_address"},
            )
    return ray.cluster_resources()
