"""Distributions and the product of experts against independent computations (grids, Monte Carlo)."""

from __future__ import annotations

import math

import pytest
import torch

from models.distributions import DiagonalGaussian, DiagonalLaplace, product_of_experts, standard_normal_log_prob

GRID = torch.linspace(-12.0, 12.0, 120_001, dtype=torch.float64)


def normal_density(x: torch.Tensor, mu: float, var: float) -> torch.Tensor:
    return torch.exp(-0.5 * (x - mu) ** 2 / var) / math.sqrt(2 * math.pi * var)


def grid_moments(unnormalized: torch.Tensor) -> tuple[float, float]:
    """Mean and variance of a density known up to a constant, by trapezoidal integration."""
    mass = torch.trapezoid(unnormalized, GRID)
    mean = torch.trapezoid(GRID * unnormalized, GRID) / mass
    var = torch.trapezoid((GRID - mean) ** 2 * unnormalized, GRID) / mass
    return float(mean), float(var)


@pytest.mark.parametrize("prior_expert", [False, True])
def test_product_of_experts_matches_grid_product(prior_expert):
    # Three 1-D experts; rows = subsets {0}, {0,2}, {1,2}, {0,1,2}.
    mu = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64).reshape(3, 1, 1)
    logvar = torch.tensor([0.4, -1.2, 1.1], dtype=torch.float64).reshape(3, 1, 1)
    mask = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    joint = product_of_experts(mu, logvar, mask, prior_weight=1.0 if prior_expert else None)
    for row, members in enumerate(mask):
        # Product of the (log-)densities on the grid; log space keeps the tails finite.
        log_density = sum(
            torch.log(normal_density(GRID, float(mu[m]), float(logvar[m].exp())))
            for m in torch.nonzero(members).flatten()
        )
        if prior_expert:
            log_density = log_density + torch.log(normal_density(GRID, 0.0, 1.0))
        mean, var = grid_moments(torch.exp(log_density - log_density.max()))
        assert float(joint.mu[row]) == pytest.approx(mean, abs=1e-6)
        assert float(joint.logvar[row].exp()) == pytest.approx(var, rel=1e-6)


def test_weighted_product_is_the_normalized_geometric_mean():
    # seed 004, Definition 3: prod_k q_k^{pi_k} normalized, prior included with pi_prior.
    mu = torch.tensor([2.0, -1.0], dtype=torch.float64).reshape(2, 1, 1)
    logvar = torch.tensor([-0.5, 0.8], dtype=torch.float64).reshape(2, 1, 1)
    pi = torch.tensor([[0.3, 0.45]], dtype=torch.float64)
    joint = product_of_experts(mu, logvar, pi, prior_weight=0.25)
    log_density = (
        0.3 * torch.log(normal_density(GRID, 2.0, math.exp(-0.5)))
        + 0.45 * torch.log(normal_density(GRID, -1.0, math.exp(0.8)))
        + 0.25 * torch.log(normal_density(GRID, 0.0, 1.0))
    )
    mean, var = grid_moments(torch.exp(log_density - log_density.max()))
    assert float(joint.mu[0]) == pytest.approx(mean, abs=1e-6)
    assert float(joint.logvar[0].exp()) == pytest.approx(var, rel=1e-6)


def test_product_of_experts_is_stable_in_float32_for_extreme_precisions():
    torch.manual_seed(0)
    mu = torch.randn(3, 4, 5)
    logvar = torch.tensor([-40.0, 0.0, 35.0]).reshape(3, 1, 1).expand(3, 4, 5).clone().requires_grad_(True)
    mask = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    joint = product_of_experts(mu, logvar, mask, prior_weight=1.0)
    # float64 reference computed directly from precisions (fine in float64 at this range).
    precision = torch.exp(-logvar.double())
    ref_precision = mask.double() @ precision.reshape(3, -1) + 1.0
    ref_mean = (mask.double() @ (precision * mu.double()).reshape(3, -1)) / ref_precision
    assert torch.isfinite(joint.mu).all() and torch.isfinite(joint.logvar).all()
    torch.testing.assert_close(joint.logvar.double().reshape(6, -1), -ref_precision.log(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint.mu.double().reshape(6, -1), ref_mean, rtol=1e-4, atol=1e-5)
    (joint.mu.sum() + joint.logvar.sum()).backward()
    assert torch.isfinite(logvar.grad).all()


def test_missing_expert_placeholders_do_not_change_the_product():
    torch.manual_seed(1)
    mu, logvar = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    reference = product_of_experts(mu, logvar, mask)
    logvar_placeholder = logvar.clone()
    logvar_placeholder[1] = -200.0  # an absent expert with an absurd precision
    result = product_of_experts(mu, logvar_placeholder, mask)
    torch.testing.assert_close(result.mu, reference.mu)
    torch.testing.assert_close(result.logvar, reference.logvar)


def test_gaussian_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(2)
    q = DiagonalGaussian(torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.3, -0.7, 0.1]], dtype=torch.float64))
    p = DiagonalGaussian(torch.tensor([[0.1, 0.4, 1.0]], dtype=torch.float64), torch.tensor([[-0.2, 0.5, 0.0]], dtype=torch.float64))
    z, log_q = q.rsample_with_log_prob(400_000)
    for target, log_p in ((p, p.log_prob(z)), (None, standard_normal_log_prob(z))):
        samples = (log_q - log_p).squeeze(-1)
        closed = q.kl(target) if target is not None else q.kl_standard_normal()
        stderr = samples.std() / math.sqrt(samples.numel())
        assert abs(float(samples.mean() - closed)) < 5 * float(stderr)


def test_gaussian_log_prob_agrees_with_sampling_noise_and_torch():
    torch.manual_seed(3)
    q = DiagonalGaussian(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    z, log_q = q.rsample_with_log_prob(5)
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=1e-5, atol=1e-4)
    reference = torch.distributions.Normal(q.mu, (0.5 * q.logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, reference, rtol=1e-5, atol=1e-4)


def test_laplace_sampling_density_and_kl():
    torch.manual_seed(4)
    loc = torch.tensor([[0.7, -1.5]], dtype=torch.float64)
    log_scale = torch.tensor([[-0.3, 0.4]], dtype=torch.float64)
    q = DiagonalLaplace(loc, log_scale)
    z, log_q = q.rsample_with_log_prob(400_000)
    reference = torch.distributions.Laplace(loc, log_scale.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, reference)
    # Sample moments: mean loc, variance 2 b^2.
    torch.testing.assert_close(z.mean(0), loc, atol=0.01, rtol=0)
    torch.testing.assert_close(z.var(0), q.variance, atol=0.02, rtol=0.02)
    samples = (log_q - standard_normal_log_prob(z)).squeeze(-1)
    stderr = samples.std() / math.sqrt(samples.numel())
    assert abs(float(samples.mean() - q.kl_standard_normal())) < 5 * float(stderr)
