"""Checks shared by the network tests of every dataset."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def fit_errors(encoder: nn.Module, decoder: nn.Module, x: Tensor, error: Callable[[Tensor], Tensor],
               steps: int = 200, lr: float = 3e-3) -> tuple[float, float]:
    """``error(decoder(mu(x)))`` in eval mode before and after ``steps`` Adam steps on ``x`` (train
    mode): a pair that cannot fit a handful of fixed examples is broken, whatever its shapes."""
    def evaluate() -> float:
        encoder.eval(), decoder.eval()
        with torch.no_grad():
            value = float(error(decoder(encoder(x)[0])))
        encoder.train(), decoder.train()
        return value

    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    before = evaluate()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        error(decoder(encoder(x)[0])).backward()
        optimizer.step()
    return before, evaluate()
