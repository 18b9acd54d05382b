"""Aggregators: special cases of MoPoE (seed 001 §3.3), mixture densities, mmJSD's JS term."""

from __future__ import annotations

import math

import pytest
import torch

from models.aggregators import AGGREGATORS, build_aggregator
from models.aggregators.mixture import GaussianMixture
from models.distributions import DiagonalGaussian
from models.subsets import full_row, subset_mask, unimodal_rows

M, B, D = 3, 4, 5


@pytest.fixture
def experts():
    torch.manual_seed(0)
    return torch.randn(M, B, D, dtype=torch.float64), torch.randn(M, B, D, dtype=torch.float64) * 0.5


def test_fixed_fusion_aggregators_are_registered():
    assert {"poe", "moe", "mopoe", "mmjsd"} <= set(AGGREGATORS)


def test_mopoe_on_unimodal_subsets_is_moe(experts):
    mu, logvar = experts
    mask = subset_mask(M)
    unimodal = mask[unimodal_rows(mask)]
    mopoe, moe = build_aggregator("mopoe", M, D), build_aggregator("moe", M, D)

    a = mopoe.subset_posteriors(mu, logvar, unimodal)
    b = moe.subset_posteriors(mu, logvar, unimodal)
    z = torch.randn(7, M, B, D, dtype=torch.float64)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.log_prob(z), b.log_prob(z))

    torch.manual_seed(5)
    out_mopoe = mopoe(mu, logvar, unimodal, 3)
    torch.manual_seed(5)
    out_moe = moe(mu, logvar, unimodal, 3)
    torch.testing.assert_close(out_mopoe.divergence, out_moe.divergence)
    torch.testing.assert_close(out_mopoe.z, out_moe.z)
    torch.testing.assert_close(out_mopoe.log_q, out_moe.log_q)
    # The joint densities agree away from the samples too.
    z_joint = torch.randn(6, 1, B, D, dtype=torch.float64)
    torch.testing.assert_close(
        mopoe.joint_posterior(mu, logvar, unimodal).log_prob(z_joint),
        moe.joint_posterior(mu, logvar, mask).log_prob(z_joint),
    )


@pytest.mark.parametrize("prior_expert", ["none", "full_set", "all_subsets"])
def test_mopoe_on_the_full_set_is_poe(experts, prior_expert):
    mu, logvar = experts
    mask = subset_mask(M)
    full = mask[full_row(mask)]
    mopoe = build_aggregator("mopoe", M, D, prior_expert=prior_expert)
    poe = build_aggregator("poe", M, D, prior_expert=prior_expert)
    a = mopoe.subset_posteriors(mu, logvar, full)
    b = poe.joint_posterior(mu, logvar, mask)
    torch.testing.assert_close(a.mu, b.mu)
    torch.testing.assert_close(a.logvar, b.logvar)
    torch.manual_seed(1)
    out_mopoe = mopoe(mu, logvar, full, 4)
    out_poe = poe(mu, logvar, mask, 4)
    torch.testing.assert_close(out_mopoe.divergence, out_poe.divergence)
    # One-component mixture density == Gaussian density, at the PoE's own samples.
    torch.testing.assert_close(mopoe.joint_posterior(mu, logvar, full).log_prob(out_poe.z), out_poe.log_q)


@pytest.mark.parametrize("max_bytes", [None, 1])  # one chunk, or one sample per chunk
def test_mixture_log_prob_is_the_weighted_sum_of_component_densities(max_bytes, monkeypatch):
    from models.aggregators import mixture as mixture_module

    if max_bytes is not None:
        monkeypatch.setattr(mixture_module, "MAX_TEMPORARY_BYTES", max_bytes)
    torch.manual_seed(2)
    components = DiagonalGaussian(torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(4, 3, 2, dtype=torch.float64))
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.5, 0.0]], dtype=torch.float64)
    mixture = GaussianMixture(components, weights)
    z = torch.randn(5, 2, 3, 2, dtype=torch.float64)
    density = torch.zeros(5, 2, 3, dtype=torch.float64)
    for r in range(2):
        for c in range(4):
            normal = torch.distributions.Normal(components.mu[c], (0.5 * components.logvar[c]).exp())
            density[:, r] += weights[r, c] * normal.log_prob(z[:, r]).sum(-1).exp()
    torch.testing.assert_close(mixture.log_prob(z), density.log())


def test_mixture_sampling_matches_the_mixture_moments():
    torch.manual_seed(3)
    mu = torch.tensor([[[-3.0]], [[0.0]], [[4.0]]], dtype=torch.float64)
    logvar = torch.tensor([[[-1.0]], [[0.0]], [[0.5]]], dtype=torch.float64)
    weights = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    mixture = GaussianMixture(DiagonalGaussian(mu, logvar), weights)
    index = mixture.select(100_000)
    frequencies = torch.bincount(index.flatten(), minlength=3).double() / index.numel()
    torch.testing.assert_close(frequencies, weights[0], atol=0.006, rtol=0)
    z, _ = mixture.rsample_with_log_prob(100_000)
    mean = (weights[0] * mu.flatten()).sum()
    second = (weights[0] * (mu.flatten() ** 2 + logvar.flatten().exp())).sum()
    assert float(z.mean()) == pytest.approx(float(mean), abs=0.03)
    assert float(z.var()) == pytest.approx(float(second - mean**2), rel=0.02)


def test_moe_divergence_is_the_mean_unimodal_kl(experts):
    mu, logvar = experts
    out = build_aggregator("moe", M, D)(mu, logvar, subset_mask(M), 1)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1).mean(0, keepdim=True)
    torch.testing.assert_close(out.divergence, expected)


def test_mmjsd_js_divergence_against_monte_carlo_and_grid():
    torch.manual_seed(4)
    mu = torch.tensor([[[1.0, -0.5]], [[-0.8, 0.3]]], dtype=torch.float64)
    logvar = torch.tensor([[[-0.4, 0.2]], [[0.6, -0.9]]], dtype=torch.float64)
    pi = [0.35, 0.35, 0.3]
    aggregator = build_aggregator("mmjsd", 2, 2, weights=pi)
    mask = subset_mask(2)
    js = aggregator.js_divergence(mu, logvar, mask)
    dynamic = aggregator.dynamic_prior(mu, logvar, mask)

    # The dynamic prior is the normalized weighted geometric mean: check it per dimension on a grid.
    grid = torch.linspace(-10, 10, 40_001, dtype=torch.float64)
    for d in range(2):
        log_density = sum(
            w * torch.distributions.Normal(float(m), math.exp(0.5 * float(v))).log_prob(grid)
            for w, m, v in ((pi[0], mu[0, 0, d], logvar[0, 0, d]), (pi[1], mu[1, 0, d], logvar[1, 0, d]), (pi[2], 0.0, 0.0))
        )
        density = torch.exp(log_density - log_density.max())
        density = density / torch.trapezoid(density, grid)
        mean = torch.trapezoid(grid * density, grid)
        assert float(dynamic.mu[0, 0, d]) == pytest.approx(float(mean), abs=1e-6)
        assert float(dynamic.logvar[0, 0, d].exp()) == pytest.approx(float(torch.trapezoid((grid - mean) ** 2 * density, grid)), rel=1e-6)

    # JS = sum_k pi_k KL(q_k || p_dyn), each KL estimated by Monte Carlo from q_k's own samples.
    dyn = torch.distributions.Normal(dynamic.mu, (0.5 * dynamic.logvar).exp())
    distributions = [
        torch.distributions.Normal(mu[0], (0.5 * logvar[0]).exp()),
        torch.distributions.Normal(mu[1], (0.5 * logvar[1]).exp()),
        torch.distributions.Normal(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)),
    ]
    estimate, variance = 0.0, 0.0
    for w, q in zip(pi, distributions):
        z = q.sample((200_000,))
        terms = (q.log_prob(z) - dyn.log_prob(z)).sum(-1)
        estimate += w * terms.mean()
        variance += w**2 * terms.var() / terms.numel()
    assert abs(float(js[0, 0] - estimate)) < 5 * math.sqrt(float(variance))


def test_mmjsd_is_zero_when_all_experts_are_the_prior():
    zeros = torch.zeros(3, 2, 4)
    out = build_aggregator("mmjsd", 3, 4)(zeros, zeros, subset_mask(3), 1)
    torch.testing.assert_close(out.divergence, torch.zeros(1, 2))


def test_mmjsd_joint_uses_renormalized_expert_weights_and_missing_modalities():
    torch.manual_seed(6)
    mu, logvar = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    aggregator = build_aggregator("mmjsd", 3, 4, weights=[0.2, 0.3, 0.1, 0.4])
    mask = subset_mask(3)
    present = mask[[0, 2, 4]]  # m0, m2, m0_m2: modality 1 missing
    joint = aggregator.joint_posterior(mu, logvar, present)
    torch.testing.assert_close(joint.weights, torch.tensor([[2 / 3, 0.0, 1 / 3]]))
    expert_weights, prior_weight = aggregator._weights(present, torch.float32)
    torch.testing.assert_close(expert_weights, torch.tensor([0.2, 0.0, 0.1]) / 0.7)
    assert float(prior_weight) == pytest.approx(0.4 / 0.7)


ROW_PRIOR_WEIGHTS = torch.tensor([0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0], dtype=torch.float64)
"""One prior weight per subset row (the ``full_set`` / ``all_subsets`` modes use 0/1 rows)."""


@pytest.mark.parametrize("prior_weight", [None, 1.0, ROW_PRIOR_WEIGHTS], ids=["none", "scalar", "per_row"])
def test_cache_blocked_subset_kls_and_selection_match_the_plain_composition(prior_weight, monkeypatch):
    from models.aggregators import subset_kl
    from models.distributions import ShiftedExperts, product_of_experts

    monkeypatch.setattr(subset_kl, "CHUNK_BYTES", 7 * 4 * 8 * 2)  # two batch rows per chunk
    torch.manual_seed(7)
    mask = subset_mask(3)
    mu = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    logvar = (0.5 * torch.randn(3, 5, 4, dtype=torch.float64)).requires_grad_(True)
    index = torch.tensor([[0, 6, 2, 2, 5], [6, 6, 1, 3, 4]])  # K = 2
    positions = torch.arange(5)
    weights_kl = torch.randn(mask.shape[0], 5, dtype=torch.float64)
    weights_mu, weights_lv = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)

    def plain():
        poe = product_of_experts(mu, logvar, mask, prior_weight)
        return poe.kl_standard_normal(), poe.mu[index, positions], poe.logvar[index, positions]

    def blocked():
        experts = ShiftedExperts.from_experts(mu, logvar, mask, prior_weight)
        selected = experts.selected_product(index)
        return subset_kl.subset_kls(experts), selected.mu, selected.logvar

    results = []
    for function in (plain, blocked):
        kl, sel_mu, sel_lv = function()
        loss = (weights_kl * kl).sum() + (weights_mu * sel_mu).sum() + (weights_lv * sel_lv).sum()
        grads = torch.autograd.grad(loss, (mu, logvar))
        results.append((kl, sel_mu, sel_lv, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_avg_averages_means_and_standard_deviations_of_each_subset():
    """AVG (seed 003 eq. 13-14) against a loop over subsets and experts."""
    from models.aggregators import build_aggregator
    from models.subsets import subset_mask

    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    subsets = subset_mask(3)
    posteriors = build_aggregator("avg", 3, 5).subset_posteriors(mu, logvar, subsets)
    for row, mask in enumerate(subsets):
        members = [m for m in range(3) if mask[m]]
        expected_mean = sum(mu[m] for m in members) / len(members)
        expected_std = sum(logvar[m].mul(0.5).exp() for m in members) / len(members)
        torch.testing.assert_close(posteriors.mean[row], expected_mean)
        torch.testing.assert_close(posteriors.variance[row].sqrt(), expected_std)
    # Training uses the full set only; its divergence is the closed-form KL of that average.
    aggregation = build_aggregator("avg", 3, 5)(mu, logvar, subsets, 1)
    joint = posteriors[len(subsets) - 1: len(subsets)]
    torch.testing.assert_close(aggregation.divergence, joint.kl_standard_normal())
