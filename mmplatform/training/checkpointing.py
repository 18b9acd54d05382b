"""What a training checkpoint holds, and how it is written and read back.

Rank 0 writes one file, ``state.pt``: model and optimizer state, the last finished epoch and its
training stage,
the divergence guard, the Aim run hash (so a resumed or retried training re-attaches to
its run instead of forking a new one) and the RNG state of every rank (gathered once per
checkpoint), so that a resumed training continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STATE_FILE = "state.pt"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written to the run's storage (unwritable, full, gone); names the
    run's checkpoint directory. The checkpoints already written stay as they are."""


def capture_rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: all ranks must call it)."""
    local = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, local)
    return states


@dataclass
class TrainingState:
    epoch: int
    """Last finished epoch (1-based); a resumed training starts at ``epoch + 1``."""
    model: dict[str, Any]
    optimizer: dict[str, Any]
    guard: dict[str, Any]
    aim_run_hash: str | None
    rng_states: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    last_objective: float = 0.0
    """The sweep objective of the last evaluation, reported on until the next one."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """What the epoch reported (``ray.train.report``): loss terms, evaluation results, objective."""
    stage: str | None = None
    """The training stage ``epoch`` belonged to (``models.families``); the optimizer state is that
    stage's. ``None`` in checkpoints written before stages existed (one stage)."""

    def save(self, directory: Path) -> Path:
        path = Path(directory) / STATE_FILE
        torch.save(self.__dict__, path)
        return path

    @classmethod
    def load(cls, directory: Path) -> "TrainingState":
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
        # weights_only=False: the state holds numpy RNG tuples; the file is our own.
        return cls(**torch.load(path, map_location="cpu", weights_only=False))

    def restore_rng(self, rank: int) -> None:
        if rank < len(self.rng_states):
            restore_rng_state(self.rng_states[rank])


def write_checkpoint_dir(state: TrainingState) -> Path:
    """A fresh temporary directory holding ``state``, for ``ray.train.Checkpoint.from_directory``."""
    directory = Path(tempfile.mkdtemp(prefix="mmplatform-ckpt-"))
    state.save(directory)
    return directory
