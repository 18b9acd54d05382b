"""The generalized f-mean and the four f-mean aggregators against closed forms and references.

References are computed independently: per-subset Python loops (the code under test has
none), ``torch.distributions`` densities, the flows' own inverse for change of variables.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from data_pipelines.modality import ModalitySpec
from models.aggregators import build_aggregator
from models.aggregators.fmean_common import FMeanSamplePosterior
from models.distributions import DiagonalGaussian, product_of_experts
from models.flows import build_flow
from models.fmean import LOG, RECIPROCAL, Bijection, fmean
from models.subsets import subset_mask
from models.vae import MultimodalVAE

F_MEAN_AGGREGATORS = ["mofop", "mopgfm", "mogfm_amortized", "iwmogfm"]
FLOW_BACKENDS = ["freia_allinone", "freia_glow", "nflows_coupling", "nflows_maf"]
TINY_FLOW = {"num_flows": 2, "coupling_layers": 1, "coupling_width": 8}


def perturbed_flow(backend: str, dim: int, seed: int = 0):
    torch.manual_seed(seed)
    flow = build_flow(backend, dim, num_flows=2, coupling_layers=1, coupling_width=16)
    with torch.no_grad():
        for parameter in flow.parameters():
            if parameter.requires_grad:  # never the frozen permutations (stack-probe 2a)
                parameter.add_(0.3 * torch.randn_like(parameter))
    return flow.double()


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every trainable flow parameter off its library init (no accidental identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=gen, dtype=parameter.dtype))


def subset_members(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).squeeze(-1).tolist() for row in mask]


# ---------------------------------------------------------------------------- the f-mean


def test_affine_f_gives_the_arithmetic_mean_of_every_subset():
    values = torch.randn(4, 3, 5, dtype=torch.float64)
    mask = subset_mask(4)
    affine = Bijection(lambda x: 3.0 * x - 2.0, lambda y: (y + 2.0) / 3.0)
    result = fmean(values, mask, affine)
    for s, members in enumerate(subset_members(mask)):
        torch.testing.assert_close(result[s], values[members].mean(0))


def test_log_gives_the_geometric_and_reciprocal_the_harmonic_mean():
    values = torch.rand(3, 2, 4, dtype=torch.float64) + 0.1
    mask = subset_mask(3)
    geometric, harmonic = fmean(values, mask, LOG), fmean(values, mask, RECIPROCAL)
    for s, members in enumerate(subset_members(mask)):
        n = len(members)
        torch.testing.assert_close(geometric[s], values[members].prod(0) ** (1.0 / n))
        torch.testing.assert_close(harmonic[s], n / values[members].reciprocal().sum(0))


def test_weights_give_the_weighted_quasi_arithmetic_mean():
    values = torch.rand(3, 6, dtype=torch.float64) + 0.5
    weights = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]], dtype=torch.float64)
    result = fmean(values, weights, LOG)
    for s in range(2):
        w = weights[s] / weights[s].sum()
        torch.testing.assert_close(result[s], torch.exp((w[:, None] * values.log()).sum(0)))


@pytest.mark.parametrize("backend", FLOW_BACKENDS)
def test_flow_f_mean_of_identical_inputs_is_the_input_and_differs_from_the_mean_otherwise(backend):
    flow = perturbed_flow(backend, 4)
    point = torch.randn(1, 3, 4, dtype=torch.float64)
    identical = point.expand(3, 3, 4)
    torch.testing.assert_close(fmean(identical, subset_mask(3), flow), point.expand(7, 3, 4), atol=1e-5, rtol=1e-5)
    distinct = torch.randn(3, 3, 4, dtype=torch.float64)
    full = fmean(distinct, None, flow)
    assert (full - distinct.mean(0, keepdim=True)).abs().max() > 1e-3, "a non-linear f is not the arithmetic mean"


def test_unused_placeholders_do_not_leak_nan_into_means_or_gradients():
    flow = perturbed_flow("freia_allinone", 4).float()
    values = torch.randn(3, 2, 4)
    values[1] = float("nan")
    values.requires_grad_(True)
    mask = torch.tensor([[True, False, False], [False, False, True], [True, False, True]])
    result = fmean(values, mask, flow)
    result.sum().backward()
    assert torch.isfinite(result).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------- mopgfm


def mopgfm(variance_domain: str, num_flows: int = 0, num_modalities: int = 3, dim: int = 4):
    return build_aggregator(
        "mopgfm", num_modalities, dim, num_flows=num_flows, coupling_layers=1, coupling_width=8, variance_domain=variance_domain
    ).double()


def expert_parameters(num_modalities: int = 3, batch: int = 2, dim: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(num_modalities, batch, dim, generator=gen, dtype=torch.float64)
    logvar = 0.8 * torch.randn(num_modalities, batch, dim, generator=gen, dtype=torch.float64)
    return mu, logvar


def test_mopgfm_with_identity_flows_averages_means_and_variances_arithmetically():
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    posterior = mopgfm("variance").subset_posteriors(mu, logvar, mask)
    for s, members in enumerate(subset_members(mask)):
        torch.testing.assert_close(posterior.mean[s], mu[members].mean(0))
        torch.testing.assert_close(posterior.variance[s], logvar[members].exp().mean(0))


def test_mopgfm_log_domain_identity_is_the_geometric_mean_of_variances():
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    posterior = mopgfm("log").subset_posteriors(mu, logvar, mask)
    for s, members in enumerate(subset_members(mask)):
        torch.testing.assert_close(posterior.variance[s], logvar[members].exp().prod(0) ** (1 / len(members)))


def test_mopgfm_reciprocal_f_sigma_is_the_harmonic_mean_that_is_subset_size_times_the_poe_variance():
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    posterior = mopgfm("precision").subset_posteriors(mu, logvar, mask)
    poe = product_of_experts(mu, logvar, mask)  # experts alone, no prior expert
    sizes = mask.sum(-1).to(torch.float64).reshape(-1, 1, 1)
    for s, members in enumerate(subset_members(mask)):
        torch.testing.assert_close(posterior.variance[s], len(members) / logvar[members].exp().reciprocal().sum(0))
    torch.testing.assert_close(posterior.variance, sizes * poe.variance)


def test_mopgfm_mean_equals_the_poe_mean_only_when_expert_variances_are_equal():
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    aggregator = mopgfm("log")
    equal_logvar = logvar[:1].expand_as(logvar)
    torch.testing.assert_close(
        aggregator.subset_posteriors(mu, equal_logvar, mask).mean, product_of_experts(mu, equal_logvar, mask).mu
    )
    # Unequal variances: the precision-weighted PoE mean is out of reach of f_mu (docstring).
    gap = aggregator.subset_posteriors(mu, logvar, mask).mean - product_of_experts(mu, logvar, mask).mu
    assert gap[3:].abs().max() > 1e-2


@pytest.mark.parametrize("variance_domain", ["log", "variance", "precision"])
def test_mopgfm_with_learned_flows_never_shrinks_identical_experts_like_the_poe(variance_domain):
    aggregator = mopgfm(variance_domain, num_flows=2)
    perturb(aggregator)
    mu0, logvar0 = expert_parameters(num_modalities=1)
    mu, logvar = mu0.expand(3, -1, -1), logvar0.expand(3, -1, -1)
    posterior = aggregator.subset_posteriors(mu, logvar, subset_mask(3))
    torch.testing.assert_close(posterior.mean, mu0.expand(7, -1, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(posterior.logvar, logvar0.expand(7, -1, -1), atol=1e-5, rtol=1e-5)


def test_mopgfm_log_q_is_the_exact_mixture_density_and_divergence_the_mean_subset_kl():
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    aggregator = mopgfm("log", num_flows=2)
    perturb(aggregator)
    out = aggregator(mu, logvar, mask, num_samples=5)
    posterior = out.subset_posteriors
    components = torch.stack(
        [Normal(posterior.mu[s], posterior.variance[s].sqrt()).log_prob(out.z[:, 0]).sum(-1) for s in range(7)]
    )
    torch.testing.assert_close(out.log_q[:, 0], torch.logsumexp(components, 0) - math.log(7))
    kl = torch.stack(
        [torch.distributions.kl_divergence(Normal(posterior.mu[s], posterior.variance[s].sqrt()), Normal(0.0, 1.0)).sum(-1) for s in range(7)]
    )
    torch.testing.assert_close(out.divergence[0], kl.mean(0))


# ---------------------------------------------------------------------------- mofop


@pytest.mark.parametrize("backend", FLOW_BACKENDS)
def test_mofop_log_q_is_the_flowed_mixture_density_by_change_of_variables(backend):
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    aggregator = build_aggregator("mofop", 3, 4, flow_backend=backend, **TINY_FLOW).double()
    perturb(aggregator)
    out = aggregator(mu, logvar, mask, num_samples=4)
    # Independent route: invert the flow, evaluate the PoE mixture there (eq. 4.8 / 3.11).
    z0, log_det_inverse = aggregator.flow.inverse(out.z[:, 0])
    poe = product_of_experts(mu, logvar, mask)
    components = torch.stack([Normal(poe.mu[s], poe.variance[s].sqrt()).log_prob(z0).sum(-1) for s in range(7)])
    expected = torch.logsumexp(components, 0) - math.log(7) + log_det_inverse
    torch.testing.assert_close(out.log_q[:, 0], expected, atol=1e-5, rtol=1e-5)
    # The subset posteriors sample from the flowed PoEs with the same change of variables.
    z, log_q = out.subset_posteriors.rsample_with_log_prob(2)
    z0, log_det_inverse = aggregator.flow.inverse(z)
    torch.testing.assert_close(log_q, Normal(poe.mu, poe.variance.sqrt()).log_prob(z0).sum(-1) + log_det_inverse, atol=1e-5, rtol=1e-5)


def test_mofop_divergence_with_identity_flow_estimates_the_mopoe_subset_kl():
    torch.manual_seed(0)
    mu, logvar = expert_parameters(dim=2)
    mask = subset_mask(3)
    aggregator = build_aggregator("mofop", 3, 2, num_flows=0).double()
    out = aggregator(mu, logvar, mask, num_samples=20000)
    closed_form = product_of_experts(mu, logvar, mask).kl_standard_normal().mean(0)
    torch.testing.assert_close(out.divergence[0], closed_form, atol=0.05, rtol=0.02)


# ------------------------------------------------------------- mogfm_amortized and iwmogfm


def test_amortized_density_is_exact_for_unit_variance_experts_and_identity_flow():
    torch.manual_seed(0)
    mu = torch.randn(3, 2, 4, dtype=torch.float64)
    logvar = torch.zeros_like(mu)  # eq. 4.12 holds exactly: f = id, q_m = N(mu_m, I)
    mask = subset_mask(3)
    aggregator = build_aggregator("mogfm_amortized", 3, 4, num_flows=0).double()
    out = aggregator(mu, logvar, mask, num_samples=3)
    for s, members in enumerate(subset_members(mask)):
        exact = Normal(mu[members].mean(0), 1.0 / math.sqrt(len(members))).log_prob(out.z[:, s]).sum(-1)
        torch.testing.assert_close(out.log_q[:, s], exact)
    torch.testing.assert_close(out.extra_losses["amortized_prior"], torch.tensor(0.0, dtype=torch.float64))


def test_amortized_prior_loss_estimates_the_kl_to_the_amortized_prior():
    torch.manual_seed(0)
    mu = torch.randn(3, 2, 2, dtype=torch.float64)
    logvar = torch.full_like(mu, -0.7)
    mask = subset_mask(3)[[0, 2, 5]]  # m0, m2, m1_m2: all three modalities present
    aggregator = build_aggregator("mogfm_amortized", 3, 2, num_flows=0, amortized_prior_weight=2.0).double()
    out = aggregator(mu, logvar, mask, num_samples=20000)
    # Eq. 4.14 with f = id: sum_m KL(N(mu_m, e^c) || N(mu_m, 1)) = M * D/2 (e^c - 1 - c), times the weight.
    c = -0.7
    expected = 2.0 * 3 * 2 * 0.5 * (math.exp(c) - 1 - c)
    torch.testing.assert_close(out.extra_losses["amortized_prior"].item(), expected, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("name", ["mogfm_amortized", "iwmogfm"])
@pytest.mark.parametrize("unimodal", ["gaussian", "laplace"])
def test_sample_based_densities_follow_change_of_variables_and_are_exact_on_unimodal_rows(name, unimodal):
    mu, logvar = expert_parameters()
    mask = subset_mask(3)
    aggregator = build_aggregator(name, 3, 4, flow_backend="freia_glow", unimodal=unimodal, **TINY_FLOW).double()
    perturb(aggregator)
    out = aggregator(mu, logvar, mask, num_samples=3)
    expert = {
        "gaussian": lambda m: Normal(mu[m], (0.5 * logvar[m]).exp()),
        "laplace": lambda m: Laplace(mu[m], (0.5 * logvar[m]).exp() / math.sqrt(2.0)),  # same variance
    }[unimodal]
    for m in range(3):
        torch.testing.assert_close(out.log_q[:, m], expert(m).log_prob(out.z[:, m]).sum(-1))
    if name == "mogfm_amortized":
        # Rows with >= 2 experts: log q(z) = log N(f(z); mean_m f(mu_m), 1/|s|) + log|det J_f(z)|.
        y, log_det = aggregator.flow(out.z)
        centres = aggregator.flow(mu)[0]
        for s, members in enumerate(subset_members(mask)[3:], start=3):
            gaussian = Normal(centres[members].mean(0), 1.0 / math.sqrt(len(members)))
            expected = gaussian.log_prob(y[:, s]).sum(-1) + log_det[:, s]
            torch.testing.assert_close(out.log_q[:, s], expected, atol=1e-5, rtol=1e-5)


def make_elementwise_affine(aggregator) -> None:
    """Constant conditioners: every nflows coupling becomes a fixed per-dimension affine map.

    Together with the permutations the flow is then ``f(z) = P (a * z + b)``: it keeps a
    diagonal covariance diagonal and changes volume by ``sum log a``.
    """
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in aggregator.flow.modules():
            if isinstance(module, torch.nn.Sequential):
                module[-1].weight.zero_()
                module[-1].bias.copy_(torch.randn(module[-1].bias.shape, generator=gen, dtype=module[-1].bias.dtype))


@pytest.mark.parametrize("num_flows", [0, 2])
def test_iwmogfm_proxy_converges_to_the_exact_density_of_the_mean_of_gaussians(num_flows):
    # For an element-wise affine f (identity, or couplings with constant conditioners) the
    # f-mean is the plain mean of independent Gaussians, N(mean mu, sum var / |s|^2) exactly,
    # whatever log|det f| is: only a correct change of variables recovers it.
    torch.manual_seed(0)
    mu, logvar = expert_parameters(dim=3)
    mask = subset_mask(3)
    options = {"flow_backend": "nflows_coupling", "num_flows": num_flows, "coupling_layers": 1, "coupling_width": 8}
    aggregator = build_aggregator("iwmogfm", 3, 3, proxy_samples=20000, **options).double()
    make_elementwise_affine(aggregator)
    if num_flows:
        assert aggregator.flow(mu)[1].abs().min() > 0.1, "the affine flow should change volume"
    out = aggregator(mu, logvar, mask, num_samples=2)
    for s, members in enumerate(subset_members(mask)):
        n = len(members)
        exact = Normal(mu[members].mean(0), (logvar[members].exp().sum(0) / n**2).sqrt())
        torch.testing.assert_close(out.log_q[:, s], exact.log_prob(out.z[:, s]).sum(-1), atol=0.05, rtol=0.02)


def test_iwmogfm_draws_extra_proxy_samples_only_when_k_is_too_small():
    mu, logvar = expert_parameters()
    posterior = FMeanSamplePosterior(DiagonalGaussian(mu, logvar), subset_mask(3), build_flow("identity", 4, 0), "proxy", min_fit_samples=2)
    assert posterior.draw(1).z.shape == (1, 7, 2, 4)
    assert posterior.draw(3).z.shape == (3, 7, 2, 4)


# ---------------------------------------------------------------------------- every aggregator


@pytest.mark.parametrize("name", F_MEAN_AGGREGATORS)
def test_options_are_json_serializable_and_unknown_choices_fail(name):
    options = json.loads(json.dumps({"flow_backend": "nflows_coupling", **TINY_FLOW}))
    assert build_aggregator(name, 2, 4, **options).name == name
    with pytest.raises(ValueError, match="unknown flow back end"):
        build_aggregator(name, 2, 4, flow_backend="nope")


@pytest.mark.parametrize(
    ("name", "option"),
    [("mofop", {"divergence": "exact"}), ("mopgfm", {"variance_domain": "std"}), ("iwmogfm", {"unimodal": "cauchy"}),
     ("mogfm_amortized", {"unimodal": "cauchy"}), ("iwmogfm", {"proxy_samples": 1})],
)
def test_invalid_choices_fail_at_construction(name, option):
    with pytest.raises(ValueError):
        build_aggregator(name, 2, 4, **TINY_FLOW, **option)


def test_mofop_mixture_mc_leaves_the_divergence_to_the_objective():
    aggregator = build_aggregator("mofop", 2, 4, divergence="mixture_mc", **TINY_FLOW)
    out = aggregator(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), subset_mask(2), num_samples=1)
    assert out.divergence is None and torch.isfinite(out.log_q).all()


@pytest.mark.parametrize("name", F_MEAN_AGGREGATORS)
@pytest.mark.parametrize("backend", FLOW_BACKENDS)
def test_every_back_end_gives_finite_outputs_and_gradients(name, backend):
    torch.manual_seed(0)
    aggregator = build_aggregator(name, 2, 4, flow_backend=backend, **TINY_FLOW)
    mu = torch.randn(2, 3, 4, requires_grad=True)
    logvar = (0.5 * torch.randn(2, 3, 4)).requires_grad_(True)
    out = aggregator(mu, logvar, subset_mask(2), num_samples=2)
    total = out.log_q.sum() + out.z.square().sum() + sum(out.extra_losses.values(), torch.tensor(0.0))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()


@pytest.mark.parametrize("name", F_MEAN_AGGREGATORS)
def test_nan_placeholders_of_missing_modalities_stay_out(name):
    torch.manual_seed(0)
    aggregator = build_aggregator(name, 3, 4, **TINY_FLOW)
    mu, logvar = torch.randn(3, 2, 4), torch.zeros(3, 2, 4)
    mu[1], logvar[1] = float("nan"), float("nan")
    mask = subset_mask(3)[[0, 2, 4]]  # m0, m2, m0_m2: modality 1 missing
    out = aggregator(mu, logvar, mask, num_samples=2)
    (out.log_q.sum() + out.z.sum() + sum(out.extra_losses.values(), torch.tensor(0.0))).backward()
    assert torch.isfinite(out.z).all() and torch.isfinite(out.log_q).all()
    assert all(torch.isfinite(p.grad).all() for p in aggregator.parameters() if p.grad is not None)


def tiny_vae(name: str, num_modalities: int, num_samples: int, seed: int = 0) -> MultimodalVAE:
    torch.manual_seed(seed)
    specs = [ModalitySpec(f"m{i}", "image", (1, 3, 3), "uint8", "gaussian") for i in range(num_modalities)]
    return MultimodalVAE(specs, aggregator=name, aggregator_options=TINY_FLOW, latent_dim=4, num_importance_samples=num_samples)


def tiny_batch(num_modalities: int, present: list[int], batch: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    data = {f"m{i}": torch.rand(batch, 1, 3, 3, generator=gen) for i in range(num_modalities)}
    return {f"m{i}": data[f"m{i}"] for i in present}


@pytest.mark.parametrize("name", F_MEAN_AGGREGATORS)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_finite_loss_gradients_and_log_likelihood_for_1_to_5_modalities_and_any_present_subset(name, num_samples):
    gen = torch.Generator().manual_seed(42)
    for num_modalities in range(1, 6):
        model = tiny_vae(name, num_modalities, num_samples)
        full = list(range(num_modalities))
        chosen = torch.randperm(num_modalities, generator=gen)[: int(torch.randint(1, num_modalities + 1, (1,), generator=gen))]
        for present in (full, sorted(chosen.tolist())):
            model.zero_grad()
            output = model(tiny_batch(num_modalities, present))
            output.loss.backward()
            assert torch.isfinite(output.loss), (num_modalities, present)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (num_modalities, present)
            assert torch.isfinite(model.log_likelihood(tiny_batch(num_modalities, present), num_samples=4)).all()
            assert model.subset_posteriors(tiny_batch(num_modalities, present)).mean.shape[-1] == 4


@pytest.mark.parametrize("name", F_MEAN_AGGREGATORS)
def test_thirty_adam_steps_lower_the_loss_on_a_fixed_batch(name):
    model = tiny_vae(name, 3, num_samples=2)
    batch = tiny_batch(3, [0, 1, 2], batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate() -> float:
        torch.manual_seed(123)  # the same noise before and after training
        with torch.no_grad():
            return float(model(batch).loss)

    before = evaluate()
    for _ in range(30):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < before - 1.0, (before, after)
