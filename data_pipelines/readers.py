"""Shard readers: plain PyTorch IterableDatasets for Ray Train workers and DataLoader workers.

``TrainReader`` gives every rank exactly ``steps_per_epoch`` full batches per epoch, because
DDP hangs when ranks run different step counts: shards are resampled with replacement
(webdataset 1.0.2's recipe: resampled, no node splitter, ``with_epoch``), so no rank ever
runs out, and the steps are divided among the DataLoader workers so that their total is
exact. An "epoch" is therefore nominal: ``steps_per_epoch`` batches, not one pass.

``EvalReader`` is exact instead: the (optionally subsampled) sample positions are cut into
contiguous, nearly equal ranges, one per (rank, worker) in that order, so every selected
sample is read exactly once across all ranks and workers; the last batch may be partial.
Ranks then see different batch counts, which is fine for a forward pass under ``no_grad``
on the unwrapped module followed by one all-reduce (DESIGN.md, "Evaluation reader").

Built on webdataset 1.0.2's pipeline pieces (``DataPipeline``, ``group_by_keys``, ``shuffle``,
``batched``, ``with_epoch``). The shard resampler is our own few lines rather than
``ResampledShards``: that one derives its seed from webdataset's worker info (environment
first) and, unless ``deterministic=True``, from the time; ours is a function of (seed, rank,
worker, epoch) alone. No node splitter is involved, so multi-rank needs no special casing.

Rank and world size come from arguments, else from torch.distributed when it is initialized,
else from the RANK/WORLD_SIZE environment variables, else 0 and 1. They are resolved when the
reader is built (in the Ray Train worker), before DataLoader workers are started.
"""

from __future__ import annotations

import numbers
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.manifest import Manifest
from data_pipelines.modality import ModalitySpec
from data_pipelines.shard_source import RawSample, ShardError, SplitSource

__all__ = ["Batch", "TrainReader", "EvalReader", "make_loader", "resolve_rank", "ShardError"]


class Batch(NamedTuple):
    inputs: dict[str, torch.Tensor]
    """Per modality: images float32 ``[B, C, H, W]`` in [0, 1]; text int64 ``[B, L]``."""
    labels: torch.Tensor
    """int64 ``[B]`` (single-label) or float32 ``[B, L]`` multi-hot (multi-label)."""
    keys: list[str]


def _image_tensor(stacked: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stacked).to(torch.float32).div_(255.0)


def _text_tensor(stacked: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stacked.astype(np.int64, copy=False))


# Stored array -> model input, per modality kind and per label kind.
MODALITY_TENSORS: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
    "image": _image_tensor,
    "text": _text_tensor,
}
def _class_index_tensor(stacked: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stacked.astype(np.int64, copy=False))


def _multi_hot_tensor(stacked: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stacked.astype(np.float32))


# Module-level functions, not lambdas: readers must pickle for spawned DataLoader workers.
LABEL_TENSORS: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
    "single": _class_index_tensor,
    "multi": _multi_hot_tensor,
    "none": _multi_hot_tensor,  # float32 [B, 0]: batches keep one shape whether a dataset has labels or not
}


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
    return rank, world_size


def _positive_int(value, name: str) -> int:
    # numpy integers from configs are fine; bools and floats are mistakes.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Collate:
    """Stacks decoded samples into a Batch; one numpy stack and one conversion per modality."""

    def __init__(self, modalities: Sequence[ModalitySpec], label_kind: str):
        self.modalities = tuple(modalities)
        self.label_tensor = LABEL_TENSORS[label_kind]

    def __call__(self, samples: list[RawSample]) -> Batch:
        inputs = {
            spec.name: MODALITY_TENSORS[spec.kind](np.stack([s.arrays[spec.name] for s in samples]))
            for spec in self.modalities
        }
        labels = self.label_tensor(np.stack([s.label for s in samples]))
        return Batch(inputs, labels, [s.key for s in samples])


class _ReaderBase(IterableDataset):
    def __init__(self, split_dir, batch_size: int, modalities, rank, world_size, verify: str):
        super().__init__()
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.source = SplitSource(split_dir, modalities, verify=verify)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.collate = _Collate(self.source.modalities, self.manifest.label_kind)

    @property
    def manifest(self) -> Manifest:
        return self.source.manifest

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        return self.source.modalities


class TrainReader(_ReaderBase):
    """Endless, shuffled, seeded full batches; exactly ``steps_per_epoch`` per rank per epoch.

    Call ``set_epoch(epoch)`` before each epoch (like DistributedSampler): the order is a
    function of (seed, rank, DataLoader worker, epoch) only. Use ``make_loader``, whose
    workers are not persistent, so the new epoch reaches them.
    """

    def __init__(
        self,
        split_dir: str | Path,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        modalities: Sequence[str] | None = None,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        verify: str = "size",
    ):
        super().__init__(split_dir, batch_size, modalities, rank, world_size, verify)
        self.steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
        self.seed = int(seed)
        self.shuffle_buffer = _positive_int(shuffle_buffer, "shuffle_buffer")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def steps_for_worker(self, worker: int, num_workers: int) -> int:
        """Workers' shares differ by at most one and sum to ``steps_per_epoch``."""
        base, extra = divmod(self.steps_per_epoch, num_workers)
        return base + (1 if worker < extra else 0)

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = _worker()
        steps = self.steps_for_worker(worker, num_workers)
        if steps == 0:
            # with_epoch(0) would mean "no limit" in webdataset; more workers than steps is legal.
            return iter(())
        # str seeds are hashed deterministically by random.Random (not subject to PYTHONHASHSEED).
        stream = f"{self.seed}/{self.rank}/{worker}/{self.epoch}"
        shard_rng = random.Random(f"shards/{stream}")
        shuffle_rng = random.Random(f"samples/{stream}")
        shards = self.source.shards

        def resampled_shards():
            while True:
                yield shards[shard_rng.randrange(len(shards))]

        def samples(shard_stream):
            for shard in shard_stream:
                yield from self.source.read_shard(shard)

        pipeline = wds.DataPipeline(
            resampled_shards,
            samples,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng),
            wds.batched(self.batch_size, collation_fn=self.collate, partial=False),
        ).with_epoch(nbatches=steps)
        return iter(pipeline)


class EvalReader(_ReaderBase):
    """Every selected sample exactly once across ranks and DataLoader workers, in stored order.

    ``max_samples`` picks a fixed random subset (seeded by ``sample_seed``, the same on every
    rank) so that evaluations during a sweep can run on a sample of the test set.
    """

    def __init__(
        self,
        split_dir: str | Path,
        batch_size: int,
        modalities: Sequence[str] | None = None,
        max_samples: int | None = None,
        sample_seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        verify: str = "size",
    ):
        super().__init__(split_dir, batch_size, modalities, rank, world_size, verify)
        total = self.manifest.num_samples
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be positive or None, got {max_samples}")
        if max_samples is None or max_samples >= total:
            self.positions = np.arange(total)
        else:
            chosen = np.random.default_rng(sample_seed).choice(total, size=max_samples, replace=False)
            self.positions = np.sort(chosen)

    @property
    def num_samples(self) -> int:
        """Selected samples over all ranks."""
        return len(self.positions)

    def rank_positions(self) -> np.ndarray:
        """This rank's contiguous share; split by rank first, so it does not depend on workers."""
        return np.array_split(self.positions, self.world_size)[self.rank]

    def worker_positions(self, worker: int, num_workers: int) -> np.ndarray:
        return np.array_split(self.rank_positions(), num_workers)[worker]

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = _worker()
        mine = self.worker_positions(worker, num_workers)
        per_shard = self.manifest.samples_per_shard
        shards = self.source.shards

        def shard_tasks():
            for shard_index in np.unique(mine // per_shard):
                within = mine[(mine // per_shard) == shard_index] % per_shard
                yield shards[int(shard_index)], frozenset(int(p) for p in within)

        def samples(tasks):
            for shard, positions in tasks:
                yield from self.source.read_shard(shard, positions)

        pipeline = wds.DataPipeline(
            shard_tasks,
            samples,
            wds.batched(self.batch_size, collation_fn=self.collate, partial=True),
        )
        return iter(pipeline)


def make_loader(reader: TrainReader | EvalReader, num_workers: int = 0, pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader for a reader: batches come from the reader (``batch_size=None``).

    Workers are not persistent: each epoch's iterator forks fresh workers from the reader's
    current state, which is how ``set_epoch`` reaches them (forking costs milliseconds).
    No ``worker_init_fn`` is needed: readers seed themselves from (seed, rank, worker id,
    epoch) rather than from torch's per-worker seed, and torch already limits each worker
    to one intra-op thread.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        reader,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,  # batches are float32: 12 MB each for PolyMNIST-5 at 256
    )
