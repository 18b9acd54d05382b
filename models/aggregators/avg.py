"""AVG (Hosoya 2018), the MMVM paper's aggregation baseline: the joint posterior's mean is the
average of the experts' means and its standard deviation the average of their standard
deviations (seed 003 eq. 13-14; the printed eq. 14 sums sigma_s, a typo for the experts' sigma_m).

Subsets used for training: the **full set** only, as PoE: the average of every modality present.
Subset posteriors (conditional generation, latent probes): the average over each subset's
experts. Divergence: closed-form KL(q(z|X) || N(0, I)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.aggregators.base import Aggregation, Aggregator, register_aggregator, subset_sizes
from models.aggregators.deferred import DeferredPosterior
from models.distributions import DiagonalGaussian
from models.subsets import full_row


def averaged_experts(mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
    """``[S, B]``: row ``s`` has the mean of the means and the mean of the standard deviations of
    the experts in subset ``s`` (``subsets [S, M]``), all rows at once."""
    weights = subsets.to(mu.dtype) / subset_sizes(subsets).to(mu.dtype)[:, None]  # [S, M]
    mean = torch.einsum("sm,mbd->sbd", weights, mu)
    std = torch.einsum("sm,mbd->sbd", weights, (0.5 * logvar).exp())
    return DiagonalGaussian(mean, 2.0 * std.log())


@register_aggregator
class AVGAggregator(Aggregator):
    name = "avg"

    def subset_posteriors(self, mu: Tensor, logvar: Tensor, subsets: Tensor) -> DiagonalGaussian:
        return averaged_experts(mu, logvar, subsets)

    def forward(self, mu: Tensor, logvar: Tensor, subsets: Tensor, num_samples: int) -> Aggregation:
        joint = averaged_experts(mu, logvar, subsets[full_row(subsets)])  # [1, B]
        z, log_q = joint.rsample_with_log_prob(num_samples)
        posteriors = DeferredPosterior(lambda: self.subset_posteriors(mu, logvar, subsets))
        return Aggregation(z=z, log_q=log_q, subset_posteriors=posteriors, divergence=joint.kl_standard_normal())
