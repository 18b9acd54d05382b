"""Model families (``models.families``): the registry, stages, MMVM's divergence and model, JNF's
stages and subset posteriors, and the config's refusals. End-to-end trainings of every family are
in ``test_families_training.py``."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from data_pipelines.modality import ModalitySpec
from mmplatform.config import ConfigError, build_config
from models.families import FAMILIES, ModelRequest, Stage, model_family
from models.families.jnf import JNFVAE
from models.families.mmvm import MMVMVAE, mmvm_divergence


def specs(count: int = 3) -> list[ModalitySpec]:
    return [ModalitySpec(f"m{i}", "image", (1, 2, 2), "uint8", "laplace") for i in range(count)]


def batch(count: int = 3, size: int = 5) -> dict[str, torch.Tensor]:
    return {f"m{i}": torch.rand(size, 1, 2, 2) for i in range(count)}


def request(count: int = 3, latent_dim: int = 3, **overrides) -> ModelRequest:
    return ModelRequest(specs=specs(count), networks={}, likelihood_options={}, latent_dim=latent_dim, beta=1.0,
                        **overrides)


def build(family: str, options: dict | None = None, **overrides):
    entry = model_family(family)
    return entry.build(request(**overrides), entry.parse_options(options or {}))


# ---------------------------------------------------------------------------------------- MMVM
def independent_kl(mu, logvar, other_mu, other_logvar):
    """KL between diagonal Gaussians by torch.distributions (an implementation of its own)."""
    return kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(other_mu, (0.5 * other_logvar).exp())).sum(-1)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mmvm_divergence_is_the_annealed_pairwise_kl_bound(alpha):
    torch.manual_seed(0)
    num_modalities, batch_size, dim = 4, 6, 5
    mu, logvar = torch.randn(num_modalities, batch_size, dim), torch.randn(num_modalities, batch_size, dim)
    zeros = torch.zeros(batch_size, dim)
    expected = torch.zeros(batch_size)
    for m in range(num_modalities):
        pairwise = sum(independent_kl(mu[m], logvar[m], mu[n], logvar[n]) for n in range(num_modalities))
        to_prior = independent_kl(mu[m], logvar[m], zeros, zeros)
        expected += ((1 - alpha) * pairwise + alpha * num_modalities * to_prior) / num_modalities
    torch.testing.assert_close(mmvm_divergence(mu, logvar, alpha), expected, rtol=1e-5, atol=1e-5)


def test_mmvm_divergence_at_alpha_one_is_the_independent_vaes_kl_and_zero_for_equal_posteriors():
    torch.manual_seed(1)
    mu, logvar = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    zeros = torch.zeros(4, 2)
    independent = sum(independent_kl(mu[m], logvar[m], zeros, zeros) for m in range(3))
    torch.testing.assert_close(mmvm_divergence(mu, logvar, 1.0), independent, rtol=1e-5, atol=1e-5)
    same_mu, same_logvar = mu[:1].expand(3, -1, -1), logvar[:1].expand(3, -1, -1)
    torch.testing.assert_close(mmvm_divergence(same_mu, same_logvar, 0.0), torch.zeros(4), atol=1e-6, rtol=0)


def test_mmvm_model_anneals_alpha_by_training_steps_and_trains_each_modality_on_its_own_latent():
    torch.manual_seed(2)
    model = build("mmvm", {"alpha_anneal_steps": 4})
    assert isinstance(model, MMVMVAE)
    inputs = batch()
    alphas = []
    for _ in range(6):
        output = model(inputs)
        alphas.append(float(output.terms["alpha"]))
        output.loss.backward()
    assert alphas == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    model.eval()
    model(inputs)  # evaluation passes do not advance the schedule
    assert int(model.training_steps) == 6
    assert "training_steps" in model.state_dict()  # the schedule resumes from a checkpoint
    # The loss is the reconstruction of each modality from its own latent plus beta times the bound.
    torch.manual_seed(3)
    model.train()
    output = model(inputs)
    nll = sum(output.modality_terms["nll"].values())
    assert float(output.loss.detach()) == pytest.approx(float(nll + model.beta * output.terms["divergence"]), rel=1e-5)
    for name in model.modality_names:
        assert all(p.grad is not None for p in model.encoders[name].parameters())


def test_mmvm_independent_baseline_keeps_alpha_at_one():
    model = build("mmvm", {"prior": "standard_normal", "alpha_anneal_steps": 1})
    for _ in range(3):
        assert float(model(batch()).terms["alpha"]) == 1.0


def test_mmvm_generates_across_modalities_but_has_no_prior_samples():
    torch.manual_seed(4)
    model = build("mmvm").eval()
    generated = model.generate(batch(size=2))
    assert set(generated) == {"m0", "m1", "m2"} and generated["m1"].shape == (7, 2, 1, 2, 2)
    # The posterior of subset {m0, m1} is the mixture of its two unimodal posteriors: its mean is theirs.
    inputs = batch(size=2)
    mu, _ = model.encode(inputs)
    means = model.subset_posteriors(inputs, ["m0", "m0_m1"]).mean
    torch.testing.assert_close(means[1], (mu[0] + mu[1]) / 2)
    with pytest.raises(NotImplementedError, match="no unconditional generation"):
        model.sample_prior(2)
    assert model_family("mmvm").abilities.skipped_evaluations("mmvm").keys() == {
        "coherence/random", "prd/random", "samples/prior", "log_likelihood"}


# ---------------------------------------------------------------------------------------- stages
def test_schedules_split_the_epochs_and_refuse_empty_stages():
    assert [(s.name, s.epochs) for s in model_family("aggregator").schedule({}, 5).stages] == [("train", 5)]
    assert [(s.name, s.epochs) for s in model_family("jnf").schedule({}, 5).stages] == [("joint", 3), ("unimodal", 2)]
    schedule = model_family("jnf_dcca").schedule({"dcca_epochs": 2, "joint_epochs": 3}, 8)
    assert [(s.name, s.epochs, s.trainable) for s in schedule.stages] == [
        ("dcca", 2, ("dcca",)), ("joint", 3, ("joint",)), ("unimodal", 3, ("unimodal",))]
    assert [schedule.stage_at(epoch).name for epoch in range(1, 9)] == ["dcca"] * 2 + ["joint"] * 3 + ["unimodal"] * 3
    with pytest.raises(ValueError, match="stage 'unimodal' gets 0 epochs"):
        model_family("jnf").schedule({"joint_epochs": 4}, 4)


def test_a_frozen_group_gets_no_gradient_and_stays_in_eval_mode():
    torch.manual_seed(5)
    model = build("jnf", {"flow_steps": 1, "flow_width": 8})
    model.set_stage(Stage("unimodal", 1, ("unimodal",)))
    model.train()
    groups = model.parameter_groups()
    assert not model.joint_encoder.training and not model.decoders["m0"].training
    assert model.encoders["m0"].training and model.flows["m0"].training
    assert not any(p.requires_grad for p in groups["joint"].parameters())
    model(batch()).loss.backward()
    assert all(p.grad is None for p in groups["joint"].parameters())
    assert any(p.grad is not None for p in groups["unimodal"].parameters())
    with pytest.raises(ValueError, match="unknown parameter groups"):
        model.set_stage(Stage("x", 1, ("decoders",)))


# ---------------------------------------------------------------------------------------- JNF
@pytest.mark.parametrize("family", ["jnf", "jnf_dcca"])
def test_jnf_stages_train_their_own_objective(family):
    torch.manual_seed(6)
    model = build(family, {"flow_steps": 1, "flow_width": 8, "dcca_dim": 2} if family == "jnf_dcca" else {"flow_steps": 1})
    inputs = batch(size=8)
    stages = model_family(family).schedule({}, 4).stages
    for stage in stages:
        model.set_stage(stage)
        model.zero_grad()
        output = model(inputs)
        output.loss.backward()
        assert torch.isfinite(output.loss)
        trained = [name for name, group in model.parameter_groups().items()
                   if any(p.grad is not None for p in group.parameters())]
        assert trained == list(stage.trainable)
    assert set(output.modality_terms["cross_entropy"]) == {"m0", "m1", "m2"}


def test_jnf_subset_posteriors_use_joint_encoder_flows_and_hmc():
    torch.manual_seed(7)
    model = build("jnf", {"flow_steps": 1, "flow_width": 8, "posterior_samples": 4, "hmc_burn_in": 5}).eval()
    assert isinstance(model, JNFVAE)
    inputs = batch(size=3)
    with torch.no_grad():
        posteriors = model.subset_posteriors(inputs)
    assert posteriors.samples.shape == (4, 7, 3, 3) and torch.isfinite(posteriors.samples).all()
    rate = model.evaluation_diagnostics()["hmc_acceptance"]  # one HMC run over the 3 two-modality subsets
    assert 0.0 <= rate <= 1.0
    assert model.evaluation_diagnostics() == {}  # read once, then reset
    generated = model.generate(inputs, ["m0", "m0_m1"])
    assert generated["m2"].shape == (2, 3, 1, 2, 2)
    assert model.sample_prior(2)["m0"].shape == (2, 1, 2, 2)
    assert torch.isfinite(model.log_likelihood(inputs, 4)).all()


# ---------------------------------------------------------------------------------------- config
def test_every_family_is_registered_and_the_default_is_the_aggregator():
    assert list(FAMILIES) == ["aggregator", "mmvm", "jnf", "jnf_dcca"]
    assert build_config({}).model.family == "aggregator"


@pytest.mark.parametrize(("tree", "message"), [
    ({"model": {"family": "vamp"}}, "model.family: unknown model family 'vamp'"),
    ({"model": {"family": "mmvm", "family_options": {"alpha_steps": 3}}}, "alpha_steps: not an option of family mmvm"),
    ({"model": {"family": "jnf", "family_options": {"hmc_step_size": -1}}}, "hmc_step_size"),
    ({"model": {"family": "mmvm", "style_latent_dim": 4}}, "model.style_latent_dim: family mmvm"),
    ({"model": {"family": "jnf"}, "training": {"epochs": 1}}, "training.epochs: family jnf: stage 'unimodal' gets 0"),
    ({"model": {"family": "mmvm"}, "evaluation": {"metrics": ["log_likelihood"]}}, "evaluation.metrics: 'log_likelihood'"),
])
def test_config_refuses_what_a_family_cannot_do(tree, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(tree)


def test_family_options_are_typed_and_in_the_hparams():
    config = build_config({"model": {"family": "mmvm", "family_options": {"alpha_anneal_steps": "50"}}})
    assert config.model.family_options == {"alpha_anneal_steps": 50}
    assert config.flat_hparams()["family"] == "mmvm" and config.flat_hparams()["alpha_anneal_steps"] == 50
    # The dataset's default metrics, less log p(X), which MMVM does not have.
    assert "log_likelihood" in build_config({}).evaluation.metrics
    assert config.evaluation.metrics == [m for m in build_config({}).evaluation.metrics if m != "log_likelihood"]


@pytest.mark.parametrize(("family", "count"), itertools.product(["mmvm", "jnf"], [2, 4]))
def test_families_build_for_any_number_of_modalities(family, count):
    torch.manual_seed(8)
    model = build(family, {"flow_steps": 1} if family == "jnf" else {}, count=count)
    assert torch.isfinite(model(batch(count)).loss)


# ---------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("family", ["mmvm", "jnf", "jnf_dcca"])
@pytest.mark.parametrize("dataset", ["celeba", "cub", "mimic"])
def test_families_train_and_generate_on_every_registered_dataset(family, dataset, request):
    """Every family on the real shards of the other datasets (image + character text, image +
    word captions, two grayscale views + a report), with each dataset's own networks: each stage's
    loss is finite and trains, and conditional generation gives every modality."""
    from data_pipelines.manifest import load_manifest
    from data_pipelines.readers import EvalReader
    from mmplatform.training.model_factory import build_model, model_family_of

    shards = request.getfixturevalue(f"{dataset}_shards")
    config = build_config({
        "data": {"dataset": dataset, "path": str(shards)},
        "model": {"family": family, "latent_dim": 4, "family_options": {
            "mmvm": {"alpha_anneal_steps": 2},
            "jnf": {"flow_steps": 1, "flow_width": 8, "posterior_samples": 2, "hmc_burn_in": 2},
            "jnf_dcca": {"flow_steps": 1, "flow_width": 8, "posterior_samples": 2, "hmc_burn_in": 2, "dcca_dim": 2},
        }[family]},
        "training": {"epochs": 4},
    })
    manifest = load_manifest(shards / "train")
    torch.manual_seed(0)
    model = build_model(config, manifest)
    inputs = next(iter(EvalReader(shards / "train", batch_size=6))).inputs
    for stage in model_family_of(config).schedule(config.model.family_options, 4).stages:
        if hasattr(model, "set_stage"):
            model.set_stage(stage)
        model.zero_grad()
        output = model(inputs)
        output.loss.backward()
        assert torch.isfinite(output.loss), (stage.name, output.terms)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), stage.name
    model.eval()
    names = list(manifest.modality_names)
    generated = model.generate(inputs, [names[0]])
    assert set(generated) == set(names)
    assert all(generated[name].shape[:2] == (1, 6) for name in names)
