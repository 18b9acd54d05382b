"""What every benchmark reports alongside its numbers, and how it reports them.

Every benchmark takes ``--smoke`` (its smallest meaningful size, the same code path and the
same comparison against its baseline; what ``tests/test_benchmarks.py`` runs) and ``--out
PATH`` (the JSON file it writes). A smoke run writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
from pathlib import Path
from typing import Any, Sequence


def machine_facts() -> dict[str, Any]:
    """The context a reader needs to compare numbers across machines and runs."""
    import torch

    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def parse_with_smoke(
    parser: argparse.ArgumentParser, smoke: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse with a ``--smoke`` flag whose settings replace the defaults (flags given
    explicitly still win). In smoke mode ``--out`` defaults to nothing: print only."""
    parser.add_argument(
        "--smoke", action="store_true",
        help="smallest meaningful run (tests): " + ", ".join(f"{k}={v}" for k, v in smoke.items())
             + "; writes no file unless --out is given",
    )
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**{"out": None, **smoke})
    return parser.parse_args(argv)


def samples_per_second(batches, warmup: int, steps: int, batch_size_of) -> float:
    """Samples per second over ``steps`` batches after ``warmup`` batches (worker start-up, first
    buffers), for the reader benchmarks; ``batch_size_of(batch)`` counts a batch's samples."""
    import time

    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    samples = 0
    start = time.perf_counter()
    for _ in range(steps):
        samples += batch_size_of(next(iterator))
    return samples / (time.perf_counter() - start)


def shuffled_batches(dataset, batch_size: int, workers: int):
    """Endless seeded-shuffle batches of a map-style ``dataset`` through torch's ``DataLoader``:
    the naive baseline the reader benchmarks compare the shard reader with."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    while True:  # as many epochs as the step count needs
        yield from loader


def add_dataset_reader_arguments(parser: argparse.ArgumentParser, images: int, fixture: str) -> None:
    """The arguments of a dataset's build-and-read benchmark (``celeba_data.py``, ``cub_data.py``)."""
    parser.add_argument("--images", type=int, default=images, help=f"images in the generated {fixture} fixture")
    parser.add_argument("--build-workers", type=int, default=None,
                        help="decoding processes of the build (default: the builder's, min(4, CPUs))")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders")
    parser.add_argument("--steps", type=int, default=20, help="timed batches per loader")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--work-dir", type=Path, default=None, help="where data is written (default: a temp dir)")


DATASET_READER_SMOKE = {"images": 24, "batch_size": 4, "workers": 1, "steps": 3, "warmup": 1}


def shard_reader_rate(split_dir: Path, args: argparse.Namespace) -> float:
    """Samples per second of the platform's training reader on ``split_dir`` (the benchmarks' subject)."""
    from data_pipelines.readers import TrainReader, make_loader

    reader = TrainReader(split_dir, args.batch_size, steps_per_epoch=args.warmup + args.steps, seed=0,
                         rank=0, world_size=1)
    return samples_per_second(make_loader(reader, args.workers, pin_memory=False), args.warmup, args.steps,
                              lambda batch: len(batch.keys))


def emit(result: dict[str, Any], out: str | Path | None) -> None:
    """Print the result as one JSON object (one line) and write it (indented) to ``out``."""
    print(json.dumps(result, default=str), flush=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
