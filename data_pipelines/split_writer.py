"""The loop every image builder runs over its planned splits: reuse an identical build, else
decode what fits in equal shards and write the split atomically, with a progress bar and one
log line per split.

A builder plans its splits (a header, the number of samples it announces) and says how to
stream the samples of one split (``samples_of(split, written, pool)``: ``written`` is how many
of them fit in equal shards, so only those images are decoded; ``pool`` is the shared decoding
pool or None for in-process decoding). The rest (the reuse check, the pool's lifetime, the bar,
the log line, closing the stream on an error) is the same for every dataset and lives here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from data_pipelines.manifest import Manifest
from data_pipelines.parallel import DecodingPool
from data_pipelines.shards import Sample, SplitHeader, plan_shards, up_to_date_manifest, write_split


class PlannedSplit(Protocol):
    name: str
    header: SplitHeader

    @property
    def count(self) -> int:
        """Samples the split announces (``write_split`` keeps those that fit in equal shards)."""
        ...


def resolved_progress_and_workers(progress: bool | None, workers: int | None) -> tuple[bool, int]:
    """A bar on a terminal, not in Ray job logs or CI output; min(4, CPUs) decoding processes."""
    return (sys.stderr.isatty() if progress is None else bool(progress),
            min(4, os.cpu_count() or 1) if workers is None else int(workers))


def write_splits(
    out: Path,
    planned: Iterable[PlannedSplit],
    samples_per_shard: int,
    samples_of: Callable[[Any, int, ProcessPoolExecutor | None], Iterator[Sample]],
    *,
    force: bool,
    workers: int,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Manifest]:
    manifests: dict[str, Manifest] = {}
    with DecodingPool(workers) as decoding:
        for split in planned:
            split_dir = Path(out) / split.name
            manifest = None if force else up_to_date_manifest(split_dir, split.header, log)
            if manifest is None:
                written = plan_shards(split.count, samples_per_shard).num_samples
                # closing(): on an error, queued decoding is cancelled now rather than at garbage collection.
                with closing(samples_of(split, written, decoding.get())) as samples, \
                        tqdm(total=written, desc=f"{split.header.dataset} {split.name}", unit="sample",
                             disable=not progress) as bar:
                    manifest = write_split(split_dir, split.header, samples, split.count, samples_per_shard,
                                           progress=bar.update)
                dropped = f" ({manifest.dropped_samples} dropped for equal shards)" if manifest.dropped_samples else ""
                log(f"{split.name}: wrote {manifest.num_samples} samples in {len(manifest.shards)} shards{dropped} "
                    f"to {split_dir}")
            manifests[split.name] = manifest
    return manifests


def add_writer_arguments(parser: Any, default_samples_per_shard: int) -> None:
    """The ``--workers`` and ``--samples-per-shard`` flags of every builder that writes with
    :func:`write_splits` (one place for their meaning and defaults)."""
    from mmplatform.commands.arguments import positive_int

    parser.add_argument("--workers", type=positive_int, default=None,
                        help="image decoding processes (default min(4, CPUs))")
    parser.add_argument("--samples-per-shard", type=positive_int, default=default_samples_per_shard,
                        help=f"maximum samples per shard (default {default_samples_per_shard})")
