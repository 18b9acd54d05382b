"""HMC sampler (models.hmc) against targets with known moments.

Tolerances are 5 standard errors of the estimate. Standard errors come from independent
replicates (the per-chain statistics of many independent chains) or, for a single long chain,
from batch means, so that autocorrelation within a chain is accounted for, not assumed away.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from models.distributions import DiagonalGaussian
from models.hmc import HMCResult, HMCSettings, hmc_sample, product_of_experts_log_prob

N_SE = 5.0

# Three diagonal experts in D = 4; sum_i 1/var_i - 2 is positive and distinct per dimension.
EXPERT_MU = torch.tensor(
    [[0.5, -1.0, 0.3, 1.2], [1.5, 0.2, -0.8, 0.4], [-0.4, 0.9, 1.1, -0.6]], dtype=torch.float64
)
EXPERT_VAR = torch.tensor(
    [[0.5, 1.0, 2.0, 0.8], [1.0, 0.6, 1.5, 0.9], [2.0, 0.9, 0.7, 1.2]], dtype=torch.float64
)


def expert_target():
    """eq. 12's target for the three experts and its closed-form mean and (diagonal) variance."""
    experts = [DiagonalGaussian(mu, var.log()).log_prob for mu, var in zip(EXPERT_MU, EXPERT_VAR)]
    precision = (1.0 / EXPERT_VAR).sum(0) - (len(experts) - 1)
    mean = (EXPERT_MU / EXPERT_VAR).sum(0) / precision
    return product_of_experts_log_prob(experts), mean, 1.0 / precision


def replicate_moments(samples: torch.Tensor, true_mean: torch.Tensor):
    """Mean and covariance (about the known mean, hence unbiased) of ``[T, C, D]`` samples of C
    independent chains, each with its standard error from the spread of the per-chain values."""
    chains = samples.shape[1]
    chain_means = samples.mean(0)  # [C, D]
    centred = samples - true_mean
    chain_covs = torch.einsum("tci,tcj->cij", centred, centred) / samples.shape[0]  # [C, D, D]
    mean, mean_se = chain_means.mean(0), chain_means.std(0) / math.sqrt(chains)
    cov, cov_se = chain_covs.mean(0), chain_covs.std(0) / math.sqrt(chains)
    return mean, mean_se, cov, cov_se


def assert_moments(samples, true_mean, true_cov):
    mean, mean_se, cov, cov_se = replicate_moments(samples, true_mean)
    assert torch.all((mean - true_mean).abs() <= N_SE * mean_se), (mean, true_mean, mean_se)
    assert torch.all((cov - true_cov).abs() <= N_SE * cov_se), (cov, true_cov, cov_se)
    # The check has power: the standard errors are small against the target's scale.
    scale = true_cov.diagonal().sqrt()
    assert torch.all(mean_se < 0.02 * scale)
    assert torch.all(cov_se < 0.05 * torch.outer(scale, scale))


def test_product_of_experts_over_prior_matches_closed_form_gaussian():
    log_prob, mean, var = expert_target()
    initial = (mean + 4.0).expand(2000, 4).clone()  # several standard deviations from the mode
    settings = HMCSettings(step_size=0.12, leapfrog_steps=10, num_samples=10, burn_in=50)
    result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(0))

    assert isinstance(result, HMCResult)
    assert result.samples.shape == (10, 2000, 4) and result.samples.dtype == torch.float64
    assert_moments(result.samples, mean, torch.diag(var))
    rate = result.acceptance_rate
    assert rate.dim() == 0 and rate.is_floating_point()
    assert 0.5 < float(rate) <= 1.0
    assert result.chain_acceptance.shape == (2000,)
    assert torch.allclose(result.chain_acceptance.mean(), rate)


def test_metropolis_correction_makes_a_coarse_integrator_exact():
    # At this step size the leapfrog energy error is large (acceptance ~0.85): without the
    # accept/reject step, or with its ratio or the final momentum half step wrong, the
    # covariance is off by tens of standard errors.
    log_prob, mean, var = expert_target()
    initial = (mean + 4.0).expand(2000, 4).clone()
    settings = HMCSettings(step_size=0.8, leapfrog_steps=4, num_samples=10, burn_in=50)
    result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(10))

    assert_moments(result.samples, mean, torch.diag(var))
    assert 0.5 < float(result.acceptance_rate) < 0.95


def test_product_of_experts_log_prob_is_eq12():
    log_prob, mean, var = expert_target()
    z = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # The product over the prior is the Gaussian of the closed form, up to a constant in z.
    closed = DiagonalGaussian(mean, var.log()).log_prob(z)
    difference = log_prob(z) - closed
    assert torch.allclose(difference, difference[0].expand(7), atol=1e-12)
    # One expert: no prior term at all.
    single = DiagonalGaussian(EXPERT_MU[0], EXPERT_VAR[0].log()).log_prob
    assert torch.equal(product_of_experts_log_prob([single])(z), single(z))
    with pytest.raises(ValueError, match="expert_log_probs"):
        product_of_experts_log_prob([])


def test_correlated_gaussian_full_covariance():
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6, -0.3], [0.6, 0.8, 0.2], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)
    initial = torch.zeros(2000, 3, dtype=torch.float64)
    settings = HMCSettings(step_size=0.1, leapfrog_steps=10, num_samples=10, burn_in=50)
    result = hmc_sample(target.log_prob, initial, settings, generator=torch.Generator().manual_seed(2))

    assert_moments(result.samples, loc, cov)
    assert float(result.acceptance_rate) > 0.5


def test_batched_chain_shape_each_chain_its_own_target():
    S, B, D = 3, 4, 2
    s = torch.arange(S, dtype=torch.float64).reshape(S, 1, 1)
    b = torch.arange(B, dtype=torch.float64).reshape(1, B, 1)
    means = torch.cat([(s - 1.0).expand(S, B, 1), (0.7 * b - 1.0).expand(S, B, 1)], dim=-1) + 0.1 * s * b
    sigma = 0.5
    shapes_seen = []

    def log_prob(z):
        shapes_seen.append(tuple(z.shape))
        return -0.5 * ((z - means) / sigma).square().sum(-1)

    settings = HMCSettings(step_size=0.15, leapfrog_steps=5, num_samples=400, burn_in=30)
    initial = torch.zeros(S, B, D, dtype=torch.float64)
    result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(3))

    assert result.samples.shape == (400, S, B, D)
    assert result.chain_acceptance.shape == (S, B)
    # All chains advance together: one batched call per leapfrog step (plus the start).
    transitions = settings.burn_in + settings.num_samples * settings.thin
    assert shapes_seen == [(S, B, D)] * (1 + transitions * settings.leapfrog_steps)
    # One long chain per target: standard errors from 20 batch means of 20 samples each.
    batch_means = result.samples.reshape(20, 20, S, B, D).mean(1)
    se = batch_means.std(0) / math.sqrt(20)
    estimate = result.samples.mean(0)
    assert torch.all((estimate - means).abs() <= N_SE * se), (estimate - means) / se
    assert torch.all(se < 0.1 * sigma)


def test_thinning_keeps_every_thin_th_transition():
    log_prob, mean, _ = expert_target()
    initial = mean.expand(5, 4).clone()
    plain = HMCSettings(step_size=0.12, num_samples=6, burn_in=3, thin=1)
    thinned = HMCSettings(step_size=0.12, num_samples=2, burn_in=3, thin=3)
    every = hmc_sample(log_prob, initial, plain, generator=torch.Generator().manual_seed(4))
    kept = hmc_sample(log_prob, initial, thinned, generator=torch.Generator().manual_seed(4))
    # Same seed and transitions: the thinned run keeps transitions 3 and 6 after burn-in.
    assert torch.equal(kept.samples, every.samples[[2, 5]])
    assert torch.equal(kept.chain_acceptance, every.chain_acceptance)


def test_huge_step_size_lowers_the_measured_acceptance():
    log_prob, mean, _ = expert_target()
    initial = mean.expand(500, 4).clone()
    rates = {}
    for step_size in (0.12, 1.4):
        settings = HMCSettings(step_size=step_size, leapfrog_steps=10, num_samples=20, burn_in=0)
        result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(5))
        # With burn_in = 0 a chain moved at a transition exactly when the proposal was accepted.
        path = torch.cat([initial.unsqueeze(0), result.samples])
        moved = (path[1:] != path[:-1]).any(-1).to(torch.float64)
        assert torch.equal(result.chain_acceptance, moved.mean(0))
        assert torch.allclose(result.acceptance_rate, moved.mean())
        rates[step_size] = float(result.acceptance_rate)
    assert rates[0.12] > 0.9
    assert 0.0 <= rates[1.4] < 0.5 * rates[0.12], rates


@pytest.mark.parametrize("bad", ["nan_value_and_gradient", "nan_gradient_only", "nan_value", "neg_inf", "pos_inf"])
def test_non_finite_proposals_are_rejected(bad):
    # Every variant misbehaves only beyond x = 1, where no accepted end point may lie.
    def log_prob(z):
        normal = -0.5 * z.square().sum(-1)
        x = z[..., 0]
        if bad == "nan_value_and_gradient":
            return normal + 0.1 * torch.sqrt(1.0 - x)
        if bad == "nan_gradient_only":  # finite value 0 beyond x = 1, gradient 0 * NaN = NaN
            return normal + torch.nan_to_num(0.1 * torch.sqrt(1.0 - x), nan=0.0)
        fill = {"nan_value": float("nan"), "neg_inf": float("-inf"), "pos_inf": float("inf")}[bad]
        return torch.where(x > 1.0, torch.full_like(x, fill), normal)

    settings = HMCSettings(step_size=0.3, leapfrog_steps=8, num_samples=30, burn_in=0)
    initial = torch.zeros(200, 2, dtype=torch.float64)
    result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(6))

    assert torch.isfinite(result.samples).all()
    assert (result.samples[..., 0] <= 1.0).all()  # no accepted end point in the bad region
    # Chains kept moving elsewhere, and proposals into the region were turned down.
    assert 0.2 < float(result.acceptance_rate) < 1.0
    assert torch.isfinite(result.chain_acceptance).all()


def test_chain_started_outside_the_support_accepts_its_first_finite_proposal():
    def log_prob(z):
        x = z[..., 0]
        return torch.where(x > 1.0, torch.full_like(x, float("-inf")), -0.5 * z.square().sum(-1))

    settings = HMCSettings(step_size=0.3, leapfrog_steps=8, num_samples=20, burn_in=0)
    initial = torch.full((200, 2), 1.2, dtype=torch.float64)
    result = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(11))
    inside = result.samples[..., 0] <= 1.0
    assert inside[-1].all()
    # Once inside, a chain never returns to where the density is zero.
    assert (inside[1:] >= inside[:-1]).all()


def test_under_no_grad_with_a_module_leaves_parameters_without_grad():
    torch.manual_seed(7)
    linear = nn.Linear(3, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3) + 0.2 * torch.randn(3, 3))

    def log_prob(z):
        return -0.5 * linear(z).square().sum(-1)

    initial = torch.zeros(50, 3, requires_grad=True)  # float32, and even a leaf with grad
    settings = HMCSettings(step_size=0.1, leapfrog_steps=5, num_samples=4, burn_in=5)
    with torch.no_grad():
        result = hmc_sample(log_prob, initial, settings)

    assert result.samples.dtype == torch.float32 and result.samples.shape == (4, 50, 3)
    assert torch.isfinite(result.samples).all()
    assert not result.samples.requires_grad and result.samples.grad_fn is None
    assert linear.weight.grad is None and linear.bias.grad is None
    assert initial.grad is None
    assert float(result.acceptance_rate) > 0.5


@pytest.mark.parametrize(
    "field, value",
    [
        ("step_size", 0.0),
        ("step_size", -0.1),
        ("step_size", float("nan")),
        ("step_size", float("inf")),
        ("leapfrog_steps", 0),
        ("leapfrog_steps", 2.5),
        ("num_samples", 0),
        ("burn_in", -1),
        ("thin", 0),
    ],
)
def test_settings_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        HMCSettings(**{field: value})


def test_log_prob_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"log_prob must return shape \(4, 2\)"):
        hmc_sample(lambda z: z.square().sum(), torch.zeros(4, 2, 3), HMCSettings())


def test_seeded_generator_reproduces_and_leaves_global_rng_alone():
    log_prob, mean, _ = expert_target()
    initial = torch.zeros(20, 4, dtype=torch.float64)
    settings = HMCSettings(step_size=0.12, num_samples=5, burn_in=5)
    global_state = torch.get_rng_state()
    first = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(8))
    second = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(8))
    other = hmc_sample(log_prob, initial, settings, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first.samples, second.samples)
    assert torch.equal(first.chain_acceptance, second.chain_acceptance)
    assert not torch.equal(first.samples, other.samples)


def test_step_size_adaptation_lets_chains_mix_on_a_posterior_far_narrower_than_the_step():
    """A Gaussian of std 0.01 with a starting step of 0.5: fixed, every proposal is rejected and
    the chains never leave their start; tuned during burn-in, the kept transitions accept near the
    target and reproduce the mean and standard deviation."""
    torch.manual_seed(3)
    dim, chains, std = 6, 400, 0.01
    mean = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    target = Normal(mean, torch.full((dim,), std, dtype=torch.float64))

    def log_prob(z):
        return target.log_prob(z).sum(-1)

    initial = mean + 5 * std * torch.randn(chains, dim, dtype=torch.float64)
    fixed = hmc_sample(log_prob, initial, HMCSettings(step_size=0.5, leapfrog_steps=5, burn_in=100, num_samples=5),
                       generator=torch.Generator().manual_seed(0))
    assert float(fixed.acceptance_rate) < 0.01
    tuned = hmc_sample(log_prob, initial, HMCSettings(step_size=0.5, leapfrog_steps=5, burn_in=100, num_samples=5,
                                                      target_acceptance=0.65),
                       generator=torch.Generator().manual_seed(0))
    assert 0.4 < float(tuned.acceptance_rate) < 0.95
    samples = tuned.samples.reshape(-1, dim)
    standard_error = std / math.sqrt(chains)  # the chains' kept samples are correlated; use the chain count
    assert (samples.mean(0) - mean).abs().max() < 5 * standard_error
    assert ((samples.std(0) / std) - 1).abs().max() < 0.15


def test_target_acceptance_is_validated():
    with pytest.raises(ValueError, match="target_acceptance"):
        HMCSettings(target_acceptance=1.0)
