"""A subset posterior computed only when first used.

The objective reads ``Aggregation.subset_posteriors`` only for evaluation (conditional
generation, latent probes); an aggregator whose training path needs just one row (PoE) hands
out this wrapper instead of computing every row's product in every training step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from torch import Tensor


class DeferredPosterior:
    """Satisfies ``SubsetPosterior``; builds the real posterior from ``factory`` on first use."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory

    @cached_property
    def posterior(self):
        return self._factory()

    @property
    def mean(self) -> Tensor:
        return self.posterior.mean

    def rsample_with_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        return self.posterior.rsample_with_log_prob(num_samples)

    def __getattr__(self, name: str):
        # Everything else (log_prob, mu, logvar, kl_standard_normal, ...) of the real posterior.
        if name.startswith("_") or name == "posterior":
            raise AttributeError(name)
        return getattr(self.posterior, name)
