"""Stratified mixture component selection (issue 18, item 2).

``component_selection``: ``random`` draws each training sample's mixture component
independently; ``stratified`` (the MoPoE/mmJSD code's ``mixture_component_selection``) cuts the
batch into contiguous shares, one per component. Checked here: the shares (equal, contiguous,
deterministic, the documented remainder), that every aggregator with the option samples them
in training mode only, that ``log_q`` stays the mixture density, and that both options have
the same expected loss over shuffled batches.
"""

from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.modality import ModalitySpec
from models import MultimodalVAE
from models.aggregators import build_aggregator
from models.aggregators.base import validate_options
from models.aggregators.mixture import stratified_components
from models.subsets import subset_mask

torch.set_num_threads(1)

SELECTING = ["mopoe", "moe", "mmjsd", "mofop", "mopgfm"]
"""The aggregators that sample one mixture component per sample."""

M, D = 3, 4


def uniform(components: int) -> torch.Tensor:
    return torch.full((1, components), 1.0 / components, dtype=torch.float64)


def shares(index: torch.Tensor, components: int) -> list[int]:
    return torch.bincount(index.flatten(), minlength=components).tolist()


# ------------------------------------------------------------------------------------ shares


@pytest.mark.parametrize(("batch", "expected"), [(56, [8] * 7), (7, [1] * 7), (60, [9, 8, 9, 8, 9, 8, 9])])
def test_shares_are_equal_contiguous_and_deterministic(batch, expected):
    state = torch.get_rng_state()
    index = stratified_components(uniform(7), 1, batch)
    assert index.shape == (1, 1, batch)
    assert torch.equal(torch.get_rng_state(), state)  # no random draw at all
    torch.manual_seed(123)
    assert torch.equal(stratified_components(uniform(7), 1, batch), index)
    row = index[0, 0]
    assert bool((row[1:] >= row[:-1]).all()), row  # contiguous: components in order, each once
    assert shares(row, 7) == expected
    assert max(expected) - min(expected) <= 1 and sum(expected) == batch


def test_the_remainder_is_placed_as_documented():
    # Component c takes the positions b with F_{c-1} <= (b + 1/2) / B < F_c.
    assert shares(stratified_components(uniform(3), 1, 10), 3) == [3, 4, 3]
    assert shares(stratified_components(uniform(3), 1, 8), 3) == [3, 2, 3]
    assert stratified_components(uniform(3), 1, 10)[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_shares_follow_non_uniform_weights_and_skip_zero_weights():
    weights = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0]], dtype=torch.float64)  # mmJSD with a modality missing
    index = stratified_components(weights, 1, 8)
    assert index[0, 0].tolist() == [0, 0, 0, 0, 2, 2, 3, 3]
    rows = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # rows are independent
    assert stratified_components(rows, 1, 4)[0].tolist() == [[0, 0, 1, 1], [2, 2, 2, 2]]


def test_importance_samples_of_one_position_cover_the_components():
    index = stratified_components(uniform(7), 7, 5)  # [K, 1, B]
    for b in range(5):
        assert sorted(index[:, 0, b].tolist()) == list(range(7))  # K = S: every subset once
    index = stratified_components(uniform(7), 3, 5)
    for b in range(5):  # K < S: no component twice
        assert len(set(index[:, 0, b].tolist())) == 3
    assert index[0, 0].tolist() != index[1, 0].tolist()


# --------------------------------------------------------------------------- the aggregators


def build(name: str, selection: str):
    options = {"component_selection": selection}
    if name in ("mofop", "mopgfm"):
        options["num_flows"] = 0  # identity flows: the components are known in closed form
    return build_aggregator(name, M, D, **options).double()


def components(name: str, aggregator, mu, logvar, mask):
    """``(weights [C], mean [C, B, D], variance [C, B, D])`` of the joint mixture, computed from
    the aggregator's subset posteriors or the experts (identity flows)."""
    if name in ("moe", "mmjsd"):
        if name == "moe":
            weights = torch.full((M,), 1.0 / M, dtype=mu.dtype)
        else:
            weights = aggregator.joint_posterior(mu, logvar, mask).weights[0]
        return weights, mu, logvar.exp()
    posterior = aggregator.base_posteriors(mu, logvar, mask) if name == "mofop" else aggregator.subset_posteriors(mu, logvar, mask)
    rows = mask.shape[0]
    return torch.full((rows,), 1.0 / rows, dtype=mu.dtype), posterior.mu, posterior.logvar.exp()


@pytest.mark.parametrize("name", SELECTING)
def test_stratified_training_samples_come_from_the_shares(name):
    generator = torch.Generator().manual_seed(0)
    batch = 14
    mu = 3.0 * torch.randn(M, batch, D, dtype=torch.float64, generator=generator)
    logvar = torch.full((M, batch, D), -20.0, dtype=torch.float64)  # samples sit on the means
    mask = subset_mask(M)
    aggregator = build(name, "stratified")
    weights, means, _ = components(name, aggregator, mu, logvar, mask)
    expected = stratified_components(weights[None], 1, batch)[0, 0]

    def chosen(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        z = aggregator(mu, logvar, mask, 1).z[0, 0]  # [B, D]
        return (z[None] - means).square().sum(-1).argmin(0)  # nearest component per position

    assert aggregator.training
    assert torch.equal(chosen(0), expected) and torch.equal(chosen(1), expected)
    aggregator.eval()  # evaluation draws every component independently
    draws = torch.stack([chosen(seed) for seed in range(6)])
    assert not all(torch.equal(row, expected) for row in draws)


@pytest.mark.parametrize("selection", ["random", "stratified"])
@pytest.mark.parametrize("name", SELECTING)
def test_log_q_is_the_mixture_density(name, selection):
    generator = torch.Generator().manual_seed(1)
    batch = 7
    mu = torch.randn(M, batch, D, dtype=torch.float64, generator=generator)
    logvar = 0.5 * torch.randn(M, batch, D, dtype=torch.float64, generator=generator)
    mask = subset_mask(M)
    aggregator = build(name, selection)
    torch.manual_seed(2)
    out = aggregator(mu, logvar, mask, 3)
    weights, means, variances = components(name, aggregator, mu, logvar, mask)
    z = out.z[:, 0]  # [K, B, D]
    per_component = torch.distributions.Normal(means, variances.sqrt()).log_prob(z[:, None]).sum(-1)  # [K, C, B]
    expected = torch.logsumexp(per_component + weights.log()[None, :, None], dim=1)
    torch.testing.assert_close(out.log_q[:, 0], expected)


@pytest.mark.parametrize("name", SELECTING)
def test_the_option_is_typed(name):
    assert validate_options(name, {"component_selection": "stratified"}) == {"component_selection": "stratified"}
    with pytest.raises(ValueError, match=r"component_selection: Input should be 'random' or 'stratified' \(got 'systematic'\)"):
        validate_options(name, {"component_selection": "systematic"})
    with pytest.raises(ValueError, match="component_selection must be one of 'random', 'stratified'"):
        build_aggregator(name, M, D, component_selection="systematic")


# ---------------------------------------------------------------------------- expected loss


def test_both_selections_have_the_same_expected_loss_over_shuffled_batches(monkeypatch):
    """MoPoE (7 subsets), batch 14, K = 1: the mean loss over 1,000 draws per option, each with
    the batch order shuffled (as the data loader does). With S dividing B every position is
    equally likely to hold every subset, so both estimate the same expectation; the tolerance is
    4 standard errors of the difference (a false alarm about once in 16,000 seeds). The same
    tolerance catches a selection with wrong subset frequencies (never the full set)."""
    from models.aggregators import mopoe as mopoe_module

    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", "image", (1, 4, 4), "float32", "gaussian") for i in range(M)]
    model = MultimodalVAE(specs, "mopoe", latent_dim=D, networks={s.name: "mlp_image" for s in specs},
                          likelihood_options={s.name: {"scale": 0.5} for s in specs}).double()
    generator = torch.Generator().manual_seed(1)
    batch = {s.name: torch.rand(14, 1, 4, 4, dtype=torch.float64, generator=generator) for s in specs}
    draws = 1000

    def losses(selection: str) -> torch.Tensor:
        model.aggregator.component_selection = selection
        values = []
        with torch.no_grad():
            for seed in range(draws):
                torch.manual_seed(seed)
                order = torch.randperm(14)
                values.append(float(model({n: x[order] for n, x in batch.items()}).loss))
        return torch.tensor(values, dtype=torch.float64)

    def gap(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        return float(a.mean() - b.mean()), math.sqrt((float(a.var()) + float(b.var())) / draws)

    random, stratified = losses("random"), losses("stratified")
    difference, stderr = gap(stratified, random)
    assert abs(difference) < 4 * stderr, (difference, stderr)

    select = mopoe_module.select_components

    def without_full_set(weights, num_samples, batch_size, selection="random"):
        weights = weights.clone()
        weights[:, -1] = 0.0
        return select(weights / weights.sum(-1, keepdim=True), num_samples, batch_size, "random")

    monkeypatch.setattr(mopoe_module, "select_components", without_full_set)
    difference, stderr = gap(losses("random"), random)
    assert abs(difference) > 4 * stderr, (difference, stderr)
