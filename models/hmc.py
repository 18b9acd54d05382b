"""Batched Hamiltonian Monte Carlo for sampling the JNF subset posteriors at evaluation time.

JNF (Senellart et al. 2023) approximates the posterior of a subset ``S`` of modalities by the
product of its unimodal posteriors divided by the prior (eq. 12)::

    ln q(z | x_S) = sum_{i in S} ln q_i(z | x_i) - (|S| - 1) ln p(z) + const,   p = N(0, I)

which has no closed form once the ``q_i`` are flows, so it is sampled with HMC (Appendix C,
eq. 20-21). ``hmc_sample`` runs one chain per leading index of ``initial`` (``[*chain_shape,
D]``, e.g. ``[S, B, D]`` subsets x batch), all chains together: one batched ``log_prob`` and
one ``torch.autograd.grad`` per leapfrog step. With potential ``U(z) = -ln q(z | x_S)`` and
kinetic energy ``K(v) = 1/2 v^T v`` (fresh ``v ~ N(0, I)`` per transition), a transition
makes ``leapfrog_steps`` leapfrog steps of size ``step_size`` (eq. 20)::

    v <- v + eps/2 grad ln q(z);   z <- z + eps v;   v <- v + eps/2 grad ln q(z)

and accepts the end point ``(z', v')`` with probability ``min(1, exp(H(z0, v0) - H(z', v')))``,
``H = U + K``, independently per chain. A proposal with a non-finite energy, position or
gradient is rejected, so NaN/inf never leaves the sampler.

``product_of_experts_log_prob`` builds eq. 12's target. Eq. 21 of the paper prints
``- ln p(z)``, which equals eq. 12's ``- (|S| - 1) ln p(z)`` only for ``|S| = 2``; the platform
follows eq. 12 for every subset size. The paper gives no step size, trajectory length or
burn-in: they are ``HMCSettings`` fields, and their defaults are ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.distributions import standard_normal_log_prob

LogProb = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HMCSettings:
    """Sampler settings; ``burn_in + num_samples * thin`` transitions are run per call.

    The trajectory length is fixed (no jitter): on a near-Gaussian target, a length close to a
    multiple of half an oscillation period along some direction makes chains flip back and
    forth instead of mixing, so burn-in from a far start can be much slower than expected.
    """

    step_size: float = 0.05
    leapfrog_steps: int = 10
    num_samples: int = 10
    """Samples kept per chain, after burn-in."""
    burn_in: int = 50
    """Transitions discarded first."""
    thin: int = 1
    """Keep every ``thin``-th transition after burn-in."""
    target_acceptance: float | None = None
    """If set, every chain tunes its own step size during burn-in towards this MH acceptance
    probability (Robbins-Monro on the log step size, rate 1/sqrt(t+1)), starting from
    ``step_size``, then keeps it fixed: the kept transitions are exact HMC. A posterior many times
    narrower than ``step_size`` would otherwise reject every proposal and never leave its start.
    ``None``: every chain uses ``step_size`` throughout."""

    def __post_init__(self) -> None:
        step = self.step_size
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise ValueError(f"step_size must be a finite number > 0, got {step!r}")
        for name, minimum in (("leapfrog_steps", 1), ("num_samples", 1), ("burn_in", 0), ("thin", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        target = self.target_acceptance
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1):
            raise ValueError(f"target_acceptance must be None or a number in (0, 1), got {target!r}")


@dataclass
class HMCResult:
    """What ``hmc_sample`` returns; acceptance counts every post-burn-in transition.

    ``acceptance_rate`` and ``chain_acceptance`` are fractions of *accepted proposals* (not
    mean acceptance probabilities) over the ``num_samples * thin`` transitions after burn-in,
    thinned-out ones included: the rate at which the kept part of the chains actually moved.
    """

    samples: Tensor
    """``[num_samples, *chain_shape, D]``, detached."""
    acceptance_rate: Tensor
    """0-d: accepted fraction over all chains and post-burn-in transitions."""
    chain_acceptance: Tensor
    """``[*chain_shape]``: accepted fraction per chain over the same transitions."""


def product_of_experts_log_prob(expert_log_probs: Sequence[LogProb]) -> LogProb:
    """Eq. 12's unnormalized ``ln q(z | x_S)``: the experts' log densities summed, minus
    ``(len - 1)`` times the standard-normal log density (summed over the last dim)."""
    experts = tuple(expert_log_probs)
    if not experts:
        raise ValueError("expert_log_probs must hold at least one expert")
    prior_power = len(experts) - 1

    def log_prob(z: Tensor) -> Tensor:
        total = experts[0](z)
        for expert in experts[1:]:
            total = total + expert(z)
        if prior_power:
            total = total - prior_power * standard_normal_log_prob(z)
        return total

    return log_prob


def _log_prob_and_grad(log_prob: LogProb, z: Tensor, chain_shape: torch.Size) -> tuple[Tensor, Tensor]:
    # Evaluation runs under no_grad: switch grad on for this graph only, and differentiate
    # w.r.t. z alone so that no parameter inside log_prob accumulates .grad.
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_prob(z)
        if value.shape != chain_shape:
            raise ValueError(f"log_prob must return shape {tuple(chain_shape)}, got {tuple(value.shape)}")
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value.sum(), inputs=z)
        else:  # a log density that does not depend on z
            grad = torch.zeros_like(z)
    return value.detach(), grad.detach()


def hmc_sample(
    log_prob: LogProb,
    initial: Tensor,
    settings: HMCSettings,
    generator: torch.Generator | None = None,
) -> HMCResult:
    """Run ``initial.shape[:-1]`` independent HMC chains on ``log_prob``, all at once.

    Args:
        log_prob: maps ``[*chain_shape, D]`` to ``[*chain_shape]``, the unnormalized target log
            density of every chain (chain ``c`` may have its own target, but must not depend
            on the other chains' positions). Differentiable in ``z`` with torch.autograd.
        initial: ``[*chain_shape, D]`` starting points; sets device and dtype of everything.
        settings: step size, trajectory length, burn-in, kept samples and thinning.
        generator: source of every random draw (momenta and MH uniforms); ``None`` uses
            torch's global RNG. A generator seeded the same way gives the same samples.

    Returns:
        ``HMCResult``; samples are detached (usable under ``torch.no_grad()``).
    """
    if initial.dim() < 1:
        raise ValueError("initial must have shape [*chain_shape, D]")
    if not initial.is_floating_point():
        raise ValueError(f"initial must be a floating-point tensor, got {initial.dtype}")
    chain_shape = initial.shape[:-1]
    draw = {"dtype": initial.dtype, "device": initial.device, "generator": generator}
    # One step size per chain ([*chain_shape, 1], broadcast over D); tuned only during burn-in.
    log_eps = torch.full((*chain_shape, 1), math.log(settings.step_size), dtype=initial.dtype, device=initial.device)

    z = initial.detach().clone()
    value, grad = _log_prob_and_grad(log_prob, z, chain_shape)
    samples = initial.new_empty((settings.num_samples, *initial.shape))
    accepted = torch.zeros(chain_shape, dtype=initial.dtype, device=initial.device)

    total = settings.burn_in + settings.num_samples * settings.thin
    for t in range(total):
        eps = log_eps.exp()
        v0 = torch.randn(initial.shape, **draw)
        # Leapfrog with the half steps of consecutive steps merged into full momentum steps.
        z_new, v = z, v0 + 0.5 * eps * grad
        for step in range(settings.leapfrog_steps):
            z_new = z_new + eps * v
            value_new, grad_new = _log_prob_and_grad(log_prob, z_new, chain_shape)
            last = step == settings.leapfrog_steps - 1
            v = v + (0.5 * eps if last else eps) * grad_new

        h0 = -value + 0.5 * v0.square().sum(-1)
        h1 = -value_new + 0.5 * v.square().sum(-1)
        log_u = torch.rand(chain_shape, **draw).log()
        # NaN compares False, but h1 = -inf (log_prob = +inf) would pass the comparison. A NaN
        # gradient at the end point is caught too: the last half step carries it into v, so h1.
        # h0 = inf (a start where log_prob = -inf) accepts any finite proposal.
        ok = torch.isfinite(h1) & torch.isfinite(z_new).all(-1)
        accept = ok & (log_u < h0 - h1)
        if settings.target_acceptance is not None and t < settings.burn_in:
            probability = torch.where(ok, (h0 - h1).clamp(max=0.0).exp(), torch.zeros_like(h1))
            probability = torch.nan_to_num(probability, nan=0.0)
            log_eps = log_eps + (probability - settings.target_acceptance).unsqueeze(-1) / math.sqrt(t + 1)

        keep = accept.unsqueeze(-1)
        z = torch.where(keep, z_new, z)
        grad = torch.where(keep, grad_new, grad)
        value = torch.where(accept, value_new, value)

        after = t - settings.burn_in
        if after >= 0:
            accepted += accept.to(accepted.dtype)
            if (after + 1) % settings.thin == 0:
                samples[after // settings.thin] = z

    chain_acceptance = accepted / (settings.num_samples * settings.thin)
    return HMCResult(samples=samples, acceptance_rate=chain_acceptance.mean(), chain_acceptance=chain_acceptance)
