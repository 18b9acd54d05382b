"""Modality-specific (style) latents of ``MultimodalVAE``: off by default, on for every aggregator.

Independent references: ``torch.distributions`` KLs and likelihoods recomputed from the raw
encoder/decoder outputs with the documented noise order (aggregator first, then one style draw
per modality in model order), and the closed-form log p(X) of a linear-Gaussian model whose
decoders read ``[z, w_m]``.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Laplace, MultivariateNormal, Normal, kl_divergence

from data_pipelines.modality import ModalitySpec
from models import AGGREGATORS, MultimodalVAE
# Importing the VAE tests registers their linear-Gaussian networks, "test_linear" (log p(X) in closed form).
from tests.test_models_vae import SIGMA

LATENT, STYLE, BATCH = 4, 3, 3
TINY_FLOW = {"num_flows": 2, "coupling_layers": 1, "coupling_width": 8}
SPECS = [
    ModalitySpec("img", "image", (1, 4, 4), "uint8", "laplace"),
    ModalitySpec("text", "text", (5,), "int64", "categorical", tuple("abcdefg")),
]


def aggregator_options(name: str) -> dict:
    """Small flows for the f-mean aggregators (the ones that take flow options)."""
    accepted = inspect.signature(AGGREGATORS[name]).parameters
    return {key: value for key, value in TINY_FLOW.items() if key in accepted}


def tiny_model(aggregator: str = "poe", seed: int = 0, **kwargs) -> MultimodalVAE:
    torch.manual_seed(seed)
    np.random.seed(seed)  # FrEIA's AllInOneBlock draws its permutations from numpy
    return MultimodalVAE(
        SPECS, aggregator, aggregator_options=aggregator_options(aggregator), latent_dim=LATENT, **kwargs
    ).double()


def tiny_batch(seed: int = 1, batch: int = BATCH) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(batch, 1, 4, 4, generator=gen, dtype=torch.float64),
        "text": torch.randint(0, 7, (batch, 5), generator=gen),
    }


def split(output: torch.Tensor, dim: int = LATENT) -> tuple[torch.Tensor, torch.Tensor]:
    return output[..., :dim], output[..., dim:]


# ------------------------------------------------------------------------ style off


@pytest.mark.parametrize("aggregator", ["poe", "mopoe", "iwmogfm"])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_style_off_is_exactly_the_model_without_the_kwargs(aggregator, num_samples):
    plain = tiny_model(aggregator, num_importance_samples=num_samples)
    off = tiny_model(aggregator, num_importance_samples=num_samples, style_latent_dim=0, style_beta={"img": 7.0})
    plain_state, off_state = plain.state_dict(), off.state_dict()
    assert list(plain_state) == list(off_state)
    for key, value in plain_state.items():
        assert off_state[key].shape == value.shape, key
        torch.testing.assert_close(off_state[key], value, rtol=0, atol=0)

    batch = tiny_batch()
    results = []
    for model in (plain, off):
        torch.manual_seed(5)
        output = model(batch)
        loss_and_terms = (output.loss, dict(output.terms))
        generated = model.generate(batch)
        prior = model.sample_prior(2)
        log_likelihood = model.log_likelihood(batch, num_samples=4)
        results.append((loss_and_terms, generated, prior, log_likelihood))
    (loss_a, terms_a), gen_a, prior_a, ll_a = results[0]
    (loss_b, terms_b), gen_b, prior_b, ll_b = results[1]
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert list(terms_a) == list(terms_b) and not any(k.startswith("style_divergence") for k in terms_b)
    for name in gen_a:
        torch.testing.assert_close(gen_b[name], gen_a[name], rtol=0, atol=0)
        torch.testing.assert_close(prior_b[name], prior_a[name], rtol=0, atol=0)
    torch.testing.assert_close(ll_b, ll_a, rtol=0, atol=0)
    assert off.style_posteriors(batch) == {}


# ------------------------------------------------------------------------ every aggregator


@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_style_on_shapes_gradients_and_generation_for_every_aggregator(aggregator):
    model = tiny_model(aggregator, style_latent_dim=STYLE, style_beta={"img": 2.0, "text": 5.0})
    batch = tiny_batch()
    for name, spec in ((s.name, s) for s in SPECS):
        mu, logvar = model.encoders[name](batch[name])
        assert mu.shape == logvar.shape == (BATCH, LATENT + STYLE)
        first_linear = next(m for m in model.decoders[name].modules() if isinstance(m, nn.Linear))
        assert first_linear.in_features == LATENT + STYLE
    mu, logvar = model.encode(batch)
    assert mu.shape == logvar.shape == (2, BATCH, LATENT)
    styles = model.style_posteriors(batch)
    assert set(styles) == {"img", "text"} and all(q.mean.shape == (BATCH, STYLE) for q in styles.values())
    assert model.subset_posteriors(batch).mean.shape == (3, BATCH, LATENT)

    for num_samples, present in ((1, ("img", "text")), (3, ("img", "text")), (2, ("text",))):
        model.zero_grad()
        model.num_importance_samples = num_samples
        output = model({n: batch[n] for n in present})
        output.loss.backward()
        assert torch.isfinite(output.loss), (num_samples, present)
        assert all(torch.isfinite(v) for v in output.terms.values())
        assert set(output.modality_terms.get("style_divergence", {})) == set(present)
        for name in present:
            for parameter in [*model.encoders[name].parameters(), *model.decoders[name].parameters()]:
                assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert torch.isfinite(model.log_likelihood({n: batch[n] for n in present}, num_samples=4)).all()

    model.eval()
    for style in ("prior", "encoded"):
        for use_mean in (False, True):
            generated = model.generate(batch, use_mean=use_mean, style=style)
            assert generated["img"].shape == (3, BATCH, 1, 4, 4)
            assert generated["text"].shape == (3, BATCH, 5) and generated["text"].dtype == torch.long
    partial = model.generate({"text": batch["text"]}, style="encoded")
    assert partial["img"].shape == (1, BATCH, 1, 4, 4)
    prior = model.sample_prior(4)
    assert prior["img"].shape == (4, 1, 4, 4) and prior["text"].shape == (4, 5)


# ------------------------------------------------------------------------ the objective


def test_style_divergence_term_is_the_closed_form_kl():
    model = tiny_model("mopoe", style_latent_dim=STYLE)
    batch = tiny_batch(batch=6)
    style_terms = model(batch).modality_terms["style_divergence"]
    for name in ("img", "text"):
        mu, logvar = (split(t)[1] for t in model.encoders[name](batch[name]))
        q = Normal(mu, (0.5 * logvar).exp())
        expected = kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean()
        torch.testing.assert_close(style_terms[name], expected.detach())


def hand_poe_single_sample_bound(model: MultimodalVAE, batch, seed: int, beta: float, style_beta: dict) -> torch.Tensor:
    """The K = 1 analytic bound recomputed: PoE by precisions, the same noise, torch.distributions."""
    params = {n: [split(t) for t in model.encoders[n](x)] for n, x in batch.items()}  # [(mu_z, mu_w), (lv_z, lv_w)]
    precision = sum(torch.exp(-lv[0]) for _, lv in params.values())
    mean = sum(torch.exp(-lv[0]) * mu[0] for mu, lv in params.values()) / precision
    torch.manual_seed(seed)
    z = mean + precision.rsqrt() * torch.randn(1, 1, BATCH, LATENT, dtype=torch.float64)[0, 0]
    shared_kl = kl_divergence(Normal(mean, precision.rsqrt()), Normal(0.0, 1.0)).sum(-1)
    bound = -beta * shared_kl
    for name in model.modality_names:  # style draws follow the aggregator's, in model order
        (_, mu_w), (_, lv_w) = params[name]
        w = mu_w + (0.5 * lv_w).exp() * torch.randn(1, BATCH, STYLE, dtype=torch.float64)[0]
        decoded = model.decoders[name](torch.cat([z, w], -1))
        if name == "img":
            log_lik = Laplace(decoded, 0.75).log_prob(batch[name]).flatten(1).sum(-1)
        else:
            log_lik = Categorical(logits=decoded).log_prob(batch[name]).sum(-1)
        style_kl = kl_divergence(Normal(mu_w, (0.5 * lv_w).exp()), Normal(0.0, 1.0)).sum(-1)
        bound = bound + log_lik - style_beta[name] * style_kl
    return bound.mean()


@pytest.mark.parametrize("style_beta", [0.0, {"img": 2.0, "text": 5.0}])
def test_single_sample_loss_is_reconstruction_from_z_and_w_plus_weighted_divergences(style_beta):
    beta = 2.5
    model = tiny_model("poe", beta=beta, style_latent_dim=STYLE, style_beta=style_beta)
    batch = tiny_batch()
    torch.manual_seed(11)
    loss = model(batch).loss
    weights = style_beta if isinstance(style_beta, dict) else {"img": style_beta, "text": style_beta}
    torch.testing.assert_close(-loss, hand_poe_single_sample_bound(model, batch, 11, beta, weights))


def test_k_samples_put_the_weighted_style_log_ratio_inside_the_log_weights():
    """K = 2 bound recomputed: logmeanexp_k of recon + beta (log p - log q)(z) + beta_m (log p - log q)(w_m)."""
    beta, style_beta = 1.5, {"img": 0.5, "text": 3.0}
    model = tiny_model("poe", beta=beta, num_importance_samples=2, style_latent_dim=STYLE, style_beta=style_beta)
    batch = tiny_batch()
    torch.manual_seed(12)
    loss = model(batch).loss

    params = {n: [split(t) for t in model.encoders[n](x)] for n, x in batch.items()}
    precision = sum(torch.exp(-lv[0]) for _, lv in params.values())
    mean = sum(torch.exp(-lv[0]) * mu[0] for mu, lv in params.values()) / precision
    torch.manual_seed(12)
    q = Normal(mean, precision.rsqrt())
    z = mean + precision.rsqrt() * torch.randn(2, 1, BATCH, LATENT, dtype=torch.float64)[:, 0]  # [K, B, D]
    log_weight = beta * (Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
    for name in model.modality_names:
        (_, mu_w), (_, lv_w) = params[name]
        q_w = Normal(mu_w, (0.5 * lv_w).exp())
        w = mu_w + (0.5 * lv_w).exp() * torch.randn(2, BATCH, STYLE, dtype=torch.float64)
        decoded = model.decoders[name](torch.cat([z, w], -1).flatten(0, 1)).unflatten(0, (2, BATCH))
        if name == "img":
            log_weight = log_weight + Laplace(decoded, 0.75).log_prob(batch[name]).flatten(2).sum(-1)
        else:
            log_weight = log_weight + Categorical(logits=decoded).log_prob(batch[name]).sum(-1)
        log_weight = log_weight + style_beta[name] * (Normal(0.0, 1.0).log_prob(w).sum(-1) - q_w.log_prob(w).sum(-1))
    expected = (torch.logsumexp(log_weight, 0) - math.log(2)).mean()
    torch.testing.assert_close(-loss, expected)


# ------------------------------------------------------------------------ log p(X), linear model

FEATURES = 3


def linear_model(aggregator: str, latent_dim: int = 2, style_dim: int = 1, **kwargs) -> MultimodalVAE:
    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", "image", (1, 1, FEATURES), "float32", "gaussian") for i in range(2)]
    model = MultimodalVAE(
        specs,
        aggregator,
        latent_dim=latent_dim,
        networks={s.name: "test_linear" for s in specs},
        likelihood_options={s.name: {"scale": SIGMA} for s in specs},
        style_latent_dim=style_dim,
        **kwargs,
    ).double()
    total = latent_dim + style_dim
    with torch.no_grad():
        for encoder in model.encoders.values():
            # Shared part: a proposal near the prior, so that importance sampling converges
            # quickly. Style part: off the prior (shifted, wider than N(0, I)) so that a log p(X)
            # that left out log p(w) - log q(w) would miss by far more than the tolerance.
            encoder.linear.weight.mul_(0.3)
            encoder.linear.bias.mul_(0.3)
            encoder.linear.bias[latent_dim:total] += 0.5
            encoder.linear.bias[total + latent_dim :] += math.log(2.25)
        for decoder in model.decoders.values():
            decoder.linear.weight[:, latent_dim:] *= 2.0  # styles that matter for x
    return model


def exact_log_marginal(model: MultimodalVAE, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """x = A z + blockdiag(B_m) w + b + noise: covariance A A^T + blockdiag(B_m B_m^T) + sigma^2 I."""
    d = model.latent_dim
    shared = torch.cat([model.decoders[n].linear.weight[:, :d] for n in inputs])
    style = torch.block_diag(*[model.decoders[n].linear.weight[:, d:] for n in inputs])
    bias = torch.cat([model.decoders[n].linear.bias for n in inputs])
    covariance = shared @ shared.T + style @ style.T + SIGMA**2 * torch.eye(shared.shape[0], dtype=shared.dtype)
    x = torch.cat([inputs[n].flatten(1) for n in inputs], dim=1)
    return MultivariateNormal(bias, covariance).log_prob(x)


def linear_inputs(batch: int, names=("m0", "m1")) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {n: torch.randn(batch, 1, 1, FEATURES, dtype=torch.float64) for n in names}


@pytest.mark.parametrize("aggregator", ["poe", "mopoe"])
def test_importance_sampled_log_likelihood_with_style_matches_the_closed_form(aggregator):
    model = linear_model(aggregator)
    inputs = linear_inputs(3)
    torch.manual_seed(2)
    estimate = model.log_likelihood(inputs, num_samples=100_000, chunk_size=10_000)
    torch.testing.assert_close(estimate, exact_log_marginal(model, inputs).detach(), atol=0.05, rtol=0)
    # One modality present: the absent modality's style is integrated out, its own enters.
    partial = {"m1": inputs["m1"]}
    torch.testing.assert_close(
        model.log_likelihood(partial, num_samples=100_000, chunk_size=10_000),
        exact_log_marginal(model, partial).detach(),
        atol=0.05,
        rtol=0,
    )


def test_importance_weighted_bound_with_style_lies_between_the_elbo_and_log_p():
    model = linear_model("mopoe")
    one = linear_inputs(1)
    inputs = {n: x.expand(1500, *x.shape[1:]) for n, x in one.items()}  # 1500 independent draws
    exact = float(exact_log_marginal(model, one).detach())
    with torch.no_grad():
        torch.manual_seed(6)
        elbo = -model(inputs).loss  # K = 1, closed-form style KL
        torch.manual_seed(7)
        bound = model.log_likelihood(inputs, num_samples=20, chunk_size=20)
        model.num_importance_samples = 5
        torch.manual_seed(8)
        training_bound_k5 = -model(inputs).loss
        torch.manual_seed(9)
        estimator_k5 = model.log_likelihood(inputs, num_samples=5, chunk_size=5)
    error = float(bound.std()) / math.sqrt(bound.numel())
    error_k5 = float(estimator_k5.std()) / math.sqrt(estimator_k5.numel())
    assert float(elbo) + 0.05 < float(estimator_k5.mean()) - 3 * error_k5
    assert float(estimator_k5.mean()) + 3 * (error_k5 + error) < float(bound.mean()) < exact + 3 * error
    # With beta = style_beta = 1 the K-sample training bound is the same estimator.
    assert float(training_bound_k5) == pytest.approx(float(estimator_k5.mean()), abs=5 * error_k5 + 0.02)


# ------------------------------------------------------------------------ generation


def test_generation_uses_prior_styles_by_default_and_encoded_styles_on_request():
    model = tiny_model("mopoe", style_latent_dim=STYLE).eval()
    batch = tiny_batch()
    posteriors = model.subset_posteriors(batch)  # rows: img, text, img_text
    z = posteriors.mean
    zeros = torch.zeros(BATCH, STYLE, dtype=torch.float64)
    by_prior_mean = model.decode(z, styles={"img": zeros, "text": zeros})
    generated = model.generate(batch, use_mean=True)
    torch.testing.assert_close(generated["img"], by_prior_mean["img"].clamp(0, 1))
    torch.testing.assert_close(generated["text"], by_prior_mean["text"].argmax(-1))

    encoded = model.generate(batch, use_mean=True, style="encoded")
    style_means = {n: q.mean for n, q in model.style_posteriors(batch).items()}
    in_subset = {"img": [0, 2], "text": [1, 2]}
    for name, rows in in_subset.items():
        with_style = model.decode(z, [name], styles={name: style_means[name]})[name]
        expected = with_style.clamp(0, 1) if name == "img" else with_style.argmax(-1)
        torch.testing.assert_close(encoded[name][rows], expected[rows])
        other = [r for r in range(3) if r not in rows]
        torch.testing.assert_close(encoded[name][other], generated[name][other])

    with pytest.raises(ValueError):
        model.generate(batch, style="posterior")
    with pytest.raises(ValueError):
        model.decode(z)  # style on: the decoders need w


def test_invalid_style_options_fail_with_the_field_name():
    with pytest.raises(ValueError, match="style_latent_dim"):
        MultimodalVAE(SPECS, "poe", latent_dim=LATENT, style_latent_dim=-1)
    with pytest.raises(ValueError, match="style_beta"):
        MultimodalVAE(SPECS, "poe", latent_dim=LATENT, style_latent_dim=2, style_beta={"image": 1.0})
    with pytest.raises(ValueError, match="style_beta"):
        MultimodalVAE(SPECS, "poe", latent_dim=LATENT, style_latent_dim=2, style_beta=-1.0)
    model = MultimodalVAE(SPECS, "poe", latent_dim=LATENT, style_latent_dim=2, style_beta={"text": 5.0})
    assert model.style_betas == {"img": 1.0, "text": 5.0}
