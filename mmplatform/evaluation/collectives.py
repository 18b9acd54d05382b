"""The evaluation's few collectives, with a no-op path when not running distributed.

The evaluation forward passes run on the unwrapped module, rank-locally; ranks meet only
here, after their loops, so that no per-batch collective can desynchronize them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int

    @classmethod
    def current(cls) -> "RankInfo":
        if is_distributed():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls(0, 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; keep it small)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a float64 vector (on the GPU when the backend is NCCL)."""
    if not is_distributed():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = values.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.cpu()
