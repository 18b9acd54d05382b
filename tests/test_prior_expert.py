"""The prior expert modes of the PoE-forming aggregators (issue 18, item 1).

``prior_expert``: ``none`` (the equations), ``full_set`` (N(0, I) as one more expert only in
the product of all the model's modalities: the MoPoE code's ``poe_fusion``, MultiVae) and
``all_subsets`` (in every subset's product: MMVAE_Hub's ``modality_poe``). Every product is
checked against the precision-weighted formula written out here, the closed-form divergences
against Monte Carlo estimates, and ``full_set`` against posterior collapse in a short training.
"""

from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.modality import ModalitySpec
from models import MultimodalVAE
from models.aggregators import build_aggregator
from models.aggregators.base import validate_options
from models.distributions import ShiftedExperts, product_of_experts
from models.subsets import full_row, subset_mask

torch.set_num_threads(1)

M, B, D = 3, 4, 5
MODES = ["none", "full_set", "all_subsets"]
PRIOR_EXPERT_AGGREGATORS = ["poe", "mopoe", "mofop"]


@pytest.fixture
def experts():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(M, B, D, dtype=torch.float64, generator=generator)
    logvar = 0.7 * torch.randn(M, B, D, dtype=torch.float64, generator=generator)
    return mu, logvar


def expected_product(mu, logvar, members, with_prior: bool):
    """PoE of the experts in ``members`` (and N(0, I) if ``with_prior``): precision
    ``sum 1/var_m (+ 1)``, mean ``sum (mu_m / var_m) / precision`` (the prior has mean 0)."""
    precision = sum((-logvar[m]).exp() for m in members) + (1.0 if with_prior else 0.0)
    mean = sum(mu[m] * (-logvar[m]).exp() for m in members) / precision
    return mean, precision.reciprocal()


def prior_rows(mode: str, mask: torch.Tensor) -> list[bool]:
    """Which rows the mode gives the prior expert, written out per mode."""
    if mode == "none":
        return [False] * mask.shape[0]
    if mode == "all_subsets":
        return [True] * mask.shape[0]
    return [int(row.sum()) == M for row in mask]  # full_set: the row of every modality


def build(name: str, mode: str):
    options = {"prior_expert": mode}
    if name == "mofop":
        options["num_flows"] = 0  # identity flow: the subset posteriors are the base PoEs
    return build_aggregator(name, M, D, **options).double()


def gaussians(name: str, aggregator, mu, logvar, mask):
    """``(mean, variance)`` ``[S, B, D]`` of every row's Gaussian (mofop: before the flow)."""
    posterior = aggregator.base_posteriors(mu, logvar, mask) if name == "mofop" else aggregator.subset_posteriors(mu, logvar, mask)
    return posterior.mu, posterior.logvar.exp()


# ------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PRIOR_EXPERT_AGGREGATORS)
def test_each_row_is_the_product_with_or_without_the_prior(name, mode, experts):
    mu, logvar = experts
    mask = subset_mask(M)
    mean, variance = gaussians(name, build(name, mode), mu, logvar, mask)
    rows_with_prior = prior_rows(mode, mask)
    assert sum(rows_with_prior) == {"none": 0, "full_set": 1, "all_subsets": 7}[mode]
    for row, members in enumerate(mask):
        indices = torch.nonzero(members).flatten().tolist()
        expected_mean, expected_variance = expected_product(mu, logvar, indices, rows_with_prior[row])
        torch.testing.assert_close(mean[row], expected_mean, msg=f"{name} {mode} row {row} mean")
        torch.testing.assert_close(variance[row], expected_variance, msg=f"{name} {mode} row {row} variance")


def test_full_set_puts_the_prior_in_the_full_row_only(experts):
    mu, logvar = experts
    mask = subset_mask(M)
    mean, variance = gaussians("mopoe", build("mopoe", "full_set"), mu, logvar, mask)
    full = int(full_row(mask))
    with_prior = expected_product(mu, logvar, range(M), True)
    without_prior = expected_product(mu, logvar, range(M), False)
    torch.testing.assert_close(mean[full], with_prior[0])
    torch.testing.assert_close(variance[full], with_prior[1])
    assert not torch.allclose(variance[full], without_prior[1])  # the prior does change it
    for m in range(M):  # the unimodal rows are the experts themselves
        torch.testing.assert_close(mean[m], mu[m])
        torch.testing.assert_close(variance[m], logvar[m].exp())


@pytest.mark.parametrize("name", PRIOR_EXPERT_AGGREGATORS)
def test_full_set_with_a_modality_missing_has_no_prior_row(name, experts):
    mu, logvar = experts
    mask = subset_mask(M)
    present = mask[[0, 1, 3]]  # m0, m1, m0_m1: m2 missing, so no row holds every modality
    mean, variance = gaussians(name, build(name, "full_set"), mu, logvar, present)
    for row, members in enumerate(present):
        expected_mean, expected_variance = expected_product(mu, logvar, torch.nonzero(members).flatten().tolist(), False)
        torch.testing.assert_close(mean[row], expected_mean)
        torch.testing.assert_close(variance[row], expected_variance)
    if name == "poe":  # the trained joint is the largest row present: without the prior too
        joint = build("poe", "full_set").joint_posterior(mu, logvar, present)
        torch.testing.assert_close(joint.logvar.exp()[0], expected_product(mu, logvar, [0, 1], False)[1])


def test_a_zero_row_weight_is_the_product_without_the_prior():
    """(The blocked KLs and selected products with per-row weights are checked against the plain
    composition in ``tests/test_models_aggregators.py``.)"""
    generator = torch.Generator().manual_seed(7)
    mask = subset_mask(3)
    mu = torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    logvar = 0.5 * torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    prior_weight = torch.tensor([0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0], dtype=torch.float64)
    # A row's prior weight of 0 is the product without a prior expert.
    without = product_of_experts(mu, logvar, mask)
    with_rows = product_of_experts(mu, logvar, mask, prior_weight)
    torch.testing.assert_close(with_rows.logvar[[0, 1, 4, 5]], without.logvar[[0, 1, 4, 5]])
    with pytest.raises(ValueError, match="one weight per row"):
        ShiftedExperts.from_experts(mu, logvar, mask, torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ divergences vs Monte Carlo


def monte_carlo_kl(mean: torch.Tensor, variance: torch.Tensor, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of ``log q(z) - log N(z; 0, I)`` for ``z ~ q = N(mean, variance)``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.distributions.Normal(mean, variance.sqrt())
    z = mean + variance.sqrt() * torch.randn((samples, *mean.shape), dtype=mean.dtype, generator=generator)
    terms = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    return terms.mean(0), terms.std(0) / math.sqrt(samples)


@pytest.mark.parametrize("mode", MODES)
def test_closed_form_divergences_match_monte_carlo(mode, experts):
    """poe: KL of the joint; mopoe: the mean over subsets of the subset KLs (thesis eq. 3.8);
    mofop (identity flow): its Monte Carlo subset divergence, against the same mean. The
    reference samples come from the products written out in this file."""
    mu, logvar = experts
    mask = subset_mask(M)
    rows_with_prior = prior_rows(mode, mask)
    kl_rows, stderr_rows = [], []
    for row, members in enumerate(mask):
        mean, variance = expected_product(mu, logvar, torch.nonzero(members).flatten().tolist(), rows_with_prior[row])
        estimate, stderr = monte_carlo_kl(mean, variance, 100_000, seed=row)
        kl_rows.append(estimate)
        stderr_rows.append(stderr)
    kl_rows, stderr_rows = torch.stack(kl_rows), torch.stack(stderr_rows)  # [S, B]

    torch.manual_seed(0)
    poe = build("poe", mode)(mu, logvar, mask, 1).divergence[0]
    assert (poe - kl_rows[-1]).abs().max() < 5 * stderr_rows[-1].max(), (poe, kl_rows[-1])

    mopoe = build("mopoe", mode)(mu, logvar, mask, 1).divergence[0]
    mean_kl, mean_stderr = kl_rows.mean(0), stderr_rows.square().sum(0).sqrt() / kl_rows.shape[0]
    assert (mopoe - mean_kl).abs().max() < 5 * mean_stderr.max(), (mopoe, mean_kl)

    mofop = build("mofop", mode)(mu, logvar, mask, 20_000).divergence[0]  # its own MC estimate
    assert (mofop - mopoe).abs().max() < 0.05 * mopoe.abs().max(), (mofop, mopoe)


# ---------------------------------------------------------------------- the typed option


@pytest.mark.parametrize("name", PRIOR_EXPERT_AGGREGATORS)
@pytest.mark.parametrize("value", [True, "yes", "full"])
def test_the_option_refuses_anything_but_the_three_modes(name, value):
    with pytest.raises(ValueError) as error:
        validate_options(name, {"prior_expert": value})
    message = str(error.value)
    assert message.startswith("prior_expert:")
    assert "'none', 'full_set' or 'all_subsets'" in message and repr(value) in message
    with pytest.raises(ValueError, match="prior_expert must be one of 'none', 'full_set', 'all_subsets'"):
        build_aggregator(name, M, D, prior_expert=value)  # the constructor refuses it too


@pytest.mark.parametrize("name", PRIOR_EXPERT_AGGREGATORS)
def test_the_modes_are_strings_with_none_the_default(name):
    for mode in MODES:
        assert validate_options(name, {"prior_expert": mode}) == {"prior_expert": mode}
    assert build_aggregator(name, M, D).prior_expert == "none"


def test_the_aim_hparams_record_the_mode_as_a_string():
    from mmplatform.config import ConfigError, build_config

    options = {"prior_expert": "full_set", "component_selection": "stratified"}
    hparams = build_config({"model": {"aggregator": "mopoe", "aggregator_options": options}}).flat_hparams()
    assert hparams["prior_expert"] == "full_set" and hparams["component_selection"] == "stratified"
    with pytest.raises(ConfigError, match="model.aggregator_options: prior_expert: Input should be 'none', 'full_set' or 'all_subsets'"):
        build_config({"model": {"aggregator": "poe", "aggregator_options": {"prior_expert": True}}})


# ----------------------------------------------------------------- a few steps of training


TOY_CLASSES, TOY_SIZE = 10, 512


def toy_data() -> dict[str, torch.Tensor]:
    """Three 1x8x8 modalities; each shows its own fixed binary template of the tuple's label
    plus noise, so the shared latent can carry the label (and only through it can a decoder
    know the template)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(TOY_SIZE) % TOY_CLASSES
    data = {}
    for m in range(3):
        templates = (torch.rand(TOY_CLASSES, 1, 8, 8, generator=generator) > 0.5).float()
        data[f"m{m}"] = templates[labels] + 0.1 * torch.randn(TOY_SIZE, 1, 8, 8, generator=generator)
    return data


def train_divergence(mode: str, steps: int = 200) -> float:
    """MoPoE, latent 8, beta 1, Gaussian likelihood (scale 0.3), Adam 1e-3, batch 64: the
    divergence term (nats) averaged over the last 20 steps."""
    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", "image", (1, 8, 8), "float32", "gaussian") for i in range(3)]
    model = MultimodalVAE(
        specs, "mopoe", {"prior_expert": mode}, latent_dim=8, beta=1.0,
        networks={spec.name: "mlp_image" for spec in specs},
        likelihood_options={spec.name: {"scale": 0.3} for spec in specs},
    )
    data = toy_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    divergences = []
    for _ in range(steps):
        index = torch.randint(0, TOY_SIZE, (64,), generator=generator)
        output = model({name: value[index] for name, value in data.items()})
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        divergences.append(float(output.terms["divergence"]))
    return sum(divergences[-20:]) / 20


def test_full_set_trains_without_posterior_collapse():
    full_set = train_divergence("full_set")
    # A collapsed posterior has a KL of ~0; a latent carrying the label needs >= log(10) = 2.3 nats.
    assert full_set > math.log(TOY_CLASSES), full_set
    # Reported, not asserted (issue 18 allows all_subsets to collapse): see the report in -s output.
    all_subsets = train_divergence("all_subsets")
    print(f"\ndivergence after 200 steps: full_set {full_set:.2f} nats, all_subsets {all_subsets:.2f} nats")
    assert math.isfinite(all_subsets)
