"""Stop a training that diverges instead of crashing the sweep or silently training on NaNs.

After ``backward`` every rank holds the same all-reduced gradients (DDP), so a decision
taken from the global gradient norm is identical on all ranks without another collective:
a NaN loss on one rank makes the reduced gradients non-finite everywhere. A bad step is
skipped (no optimizer update); after ``max_bad_steps`` of them the run ends with status
``diverged``, which the training reports to Ray Tune as a normal final result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

RUNNING = "running"
FINISHED = "finished"
DIVERGED = "diverged"


@dataclass
class DivergenceGuard:
    max_bad_steps: int
    grad_clip_norm: float | None = None
    bad_steps: int = 0

    def check_and_clip(self, parameters: Iterable[nn.Parameter]) -> bool:
        """Call between ``backward`` and ``optimizer.step``. True: take the step."""
        parameters = [p for p in parameters if p.grad is not None]
        # clip_grad_norm_ with an infinite max_norm only measures; it never rescales.
        max_norm = self.grad_clip_norm if self.grad_clip_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, error_if_nonfinite=False)
        # Decide on the (all-reduced, hence rank-identical) gradient norm only: a local loss
        # check could make ranks disagree and their replicas drift apart. A non-finite loss
        # yields non-finite gradients, so it is caught here too.
        finite = bool(torch.isfinite(grad_norm))
        if not finite:
            self.bad_steps += 1
        return finite

    @property
    def diverged(self) -> bool:
        return self.bad_steps >= self.max_bad_steps

    def state_dict(self) -> dict:
        return {"bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.bad_steps = int(state["bad_steps"])
