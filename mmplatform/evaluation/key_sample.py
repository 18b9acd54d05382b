"""A seeded sample of rows that does not depend on how the data was split across ranks.

Each row carries a priority; a ``PrioritySample`` of capacity N keeps the N rows with the
smallest priorities. Because the global N smallest are always among the union of every rank's
N smallest, each rank keeps at most ~2N rows in memory, all-gathers its N, and every rank then
picks the same global N: the chosen rows are the same for 1, 2 or 8 ranks and any batch order.

For test and training samples the priority is a seeded hash of the sample key, which makes
the kept rows a uniform random sample without replacement (a different seed, a different
sample). For prior samples it is simply their global index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def key_priorities(keys: Sequence[str], seed: int) -> np.ndarray:
    """A uniform 63-bit integer per key, fixed by (seed, key); int64 so it sorts and pickles plainly."""
    values = []
    for key in keys:
        digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
        values.append(int.from_bytes(digest, "little") >> 1)
    return np.asarray(values, dtype=np.int64)


@dataclass
class SampleState:
    """Rows sorted by priority: ``rows[name]`` is batch-first, aligned with ``priorities``."""

    priorities: np.ndarray
    rows: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.priorities)


class PrioritySample:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._priorities: list[np.ndarray] = []
        self._rows: dict[str, list[Tensor]] = {}
        self._buffered = 0

    def add(self, priorities: np.ndarray, rows: dict[str, Tensor]) -> None:
        """Add a batch; ``rows`` are batch-first tensors (moved to CPU here)."""
        priorities = np.asarray(priorities, dtype=np.int64)
        if self._rows and set(rows) != set(self._rows):
            raise ValueError(f"row names changed from {sorted(self._rows)} to {sorted(rows)}")
        for name, tensor in rows.items():
            if tensor.shape[0] != len(priorities):
                raise ValueError(f"row {name!r} has {tensor.shape[0]} entries for {len(priorities)} priorities")
            self._rows.setdefault(name, []).append(tensor.detach().cpu())
        self._priorities.append(priorities)
        self._buffered += len(priorities)
        # Compacting at 2N keeps memory bounded and the sorting cost amortized.
        if self._buffered > 2 * self.capacity:
            self._compact()

    def state(self) -> SampleState:
        self._compact()
        if not self._priorities:
            return SampleState(np.zeros(0, dtype=np.int64), {})
        return SampleState(self._priorities[0], {name: parts[0] for name, parts in self._rows.items()})

    def _compact(self) -> None:
        if not self._priorities:
            return
        merged = merge_states(
            [SampleState(np.concatenate(self._priorities), {n: torch.cat(p) for n, p in self._rows.items()})],
            self.capacity,
        )
        self._priorities = [merged.priorities]
        self._rows = {name: [tensor] for name, tensor in merged.rows.items()}
        self._buffered = len(merged)


def merge_states(states: Sequence[SampleState], capacity: int | None) -> SampleState:
    """The ``capacity`` rows of smallest priority of all ``states`` (all of them for ``None``), sorted."""
    nonempty = [s for s in states if len(s) > 0]
    if not nonempty:
        return SampleState(np.zeros(0, dtype=np.int64), {})
    priorities = np.concatenate([s.priorities for s in nonempty])
    # A stable sort keeps equal priorities (none expected from a 63-bit hash) in rank order.
    order = np.argsort(priorities, kind="stable")[:capacity]
    index = torch.from_numpy(order)
    rows = {name: torch.cat([s.rows[name] for s in nonempty])[index] for name in nonempty[0].rows}
    return SampleState(priorities[order], rows)
