"""What every benchmark reports alongside its numbers, and how it reports them."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path
from typing import Any

import torch


def machine_facts() -> dict[str, Any]:
    """The context a reader needs to compare numbers across machines and runs."""
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def emit(result: dict[str, Any], out: str | Path) -> None:
    """Print the result as one JSON object and write it (indented) to ``out``."""
    print(json.dumps(result))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
