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
            )
    return ray.cluster_resources()
