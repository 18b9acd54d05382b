"""Flow-transformed unimodal posteriors and the JNF stage-2 cross-entropy.

JNF (Senellart et al. 2023) gives every modality ``i`` a unimodal encoder ``q_i(z | x_i)``: a
diagonal Gaussian base ``q^(0)(z_0 | x_i) = N(mu_i(x_i), diag exp(logvar_i(x_i)))`` pushed
through ``K`` Masked Autoregressive Flow steps whose parameters do not depend on ``x`` (only
the base does). Its density is their eq. 8::

    ln q_i(z_K | x_i) = ln q^(0)(z_0 | x_i) - sum_k ln |det d f_k / d z_{k-1}|

Direction convention. :class:`FlowPosterior` holds one :class:`models.flows.Flow` ``T`` that
maps the latent ``z`` (JNF's ``z_K``) *back* to the base variable ``z_0 = T(z)``; JNF's
``f_K o ... o f_1`` is ``T^{-1}``. Then (eq. 8, written with ``T``'s own log-determinant)::

    ln q(z | x) = ln N(T(z); mu(x), diag exp(logvar(x))) + ln |det J_T(z)|

and sampling is ``z = T^{-1}(z_0)``, ``z_0 ~ N(mu, diag exp(logvar))``. Evaluating densities
(what stage 2 trains on) therefore uses ``Flow.forward``, which for the ``nflows_maf`` back
end is one parallel MADE pass; sampling uses ``Flow.inverse``, sequential over ``D`` for MAF.
With ``num_flows=0`` ``T`` is the identity and ``q`` is exactly the diagonal Gaussian.

Stage 2 of JNF freezes the joint encoder ``q_phi(z | X)`` and fits each unimodal encoder by the
cross-entropy of their eq. 9::

    L_JM(X) = - sum_i E_{q_phi(z | X)} [ ln q_i(z | x_i) ]

Because the entropy of the frozen joint does not depend on the unimodal encoders, minimizing
eq. 9 is minimizing ``sum_i KL(q_phi(z | X) || q_i(z | x_i))`` (their eq. 4):
``cross-entropy_i = KL_i + H[q_phi(. | X)]``. :func:`unimodal_cross_entropy` is its Monte-Carlo
estimate with samples from the joint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from models.distributions import DiagonalGaussian
from models.flows import build_flow


class FlowPosterior(nn.Module):
    """q(z | x) = base N(mu(x), diag exp(logvar(x))) pushed through an x-independent flow.

    Density evaluation is the cheap direction: the flow's forward maps ``z`` (= ``z_K``) back
    to the base variable ``z_0`` (MAF density evaluation is parallel); sampling uses the flow's
    inverse (sequential for MAF). The module owns only the flow: ``mu`` and ``logvar`` come
    from the modality's encoder network and are passed to every call.
    """

    def __init__(
        self,
        latent_dim: int,
        num_flows: int,
        backend: str = "nflows_maf",
        coupling_layers: int = 2,
        coupling_width: int = 128,
        clamp: float = 2.0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # T: z -> z_0 (see the module docstring); the identity for num_flows=0.
        self.flow = build_flow(
            backend,
            latent_dim,
            num_flows=num_flows,
            coupling_layers=coupling_layers,
            coupling_width=coupling_width,
            clamp=clamp,
        )

    def log_prob(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """``ln q(z | x)`` (JNF eq. 8): ``z`` ``[*lead, B, D]``, ``mu``/``logvar`` ``[B, D]`` -> ``[*lead, B]``."""
        z0, log_det = self.flow(z)
        return DiagonalGaussian(mu, logvar).log_prob(z0) + log_det

    def rsample(self, mu: Tensor, logvar: Tensor, num_samples: int) -> Tensor:
        """Reparameterized samples ``[num_samples, B, D]``, differentiable w.r.t. ``mu``, ``logvar``."""
        return self.sample_with_log_prob(mu, logvar, num_samples)[0]

    def sample_with_log_prob(self, mu: Tensor, logvar: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """Samples ``[num_samples, B, D]`` and their ``ln q`` ``[num_samples, B]``.

        ``ln q(z) = ln q^(0)(z_0) - ln|det J_{T^-1}(z_0)|``, the same density as
        :meth:`log_prob` (``ln|det J_T(z)| = -ln|det J_{T^-1}(z_0)|``), without a second flow pass.
        """
        z0, base_log_prob = DiagonalGaussian(mu, logvar).rsample_with_log_prob(num_samples)
        z, log_det_inverse = self.flow.inverse(z0)
        return z, base_log_prob - log_det_inverse


def unimodal_cross_entropy(
    joint_samples: Tensor,
    unimodal_log_probs: Mapping[str, Callable[[Tensor], Tensor]],
) -> tuple[Tensor, dict[str, Tensor]]:
    """JNF eq. 9 by Monte Carlo, the loss of stage 2 (joint encoder frozen).

    Args:
        joint_samples: ``[K, B, D]`` samples from the joint encoder ``q_phi(z | X)``. They are
            detached here, so no gradient reaches the joint encoder whatever the caller did.
        unimodal_log_probs: per modality name, ``z [K, B, D] -> ln q_i(z | x_i) [K, B]`` (e.g.
            ``lambda z: posterior.log_prob(z, mu_i, logvar_i)``).

    Returns:
        ``(loss, per_modality)``: ``loss = - sum_i mean_{K,B} ln q_i(z | x_i)`` and, per name, that
        modality's mean cross-entropy (detached, for logging). Subtracting the joint's entropy
        from a modality's cross-entropy estimates ``KL(q_phi(z | X) || q_i(z | x_i))`` (eq. 4).
    """
    if not unimodal_log_probs:
        raise ValueError("unimodal_cross_entropy needs at least one unimodal log-density")
    z = joint_samples.detach()
    cross_entropies = {name: -log_prob(z).mean() for name, log_prob in unimodal_log_probs.items()}
    loss = torch.stack(list(cross_entropies.values())).sum()
    return loss, {name: value.detach() for name, value in cross_entropies.items()}
