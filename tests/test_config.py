"""Config errors are caught before Ray starts and name the field and the allowed range."""

import pytest

from mmplatform.config import (
    ConfigError,
    TrainConfig,
    build_config,
    check_against_cluster,
    check_against_dataset,
    load_config,
)


@pytest.mark.parametrize(
    ("tree", "field", "hint"),
    [
        ({"model": {"aggregator": "nope"}}, "model.aggregator", "registered: "),
        ({"model": {"latent_dim": 0}}, "model.latent_dim", "greater than or equal to 1"),
        ({"model": {"beta": -0.5}}, "model.beta", "greater than or equal to 0"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate", "greater than 0"),
        ({"scaling": {"num_workers": 0}}, "scaling.num_workers", "greater than or equal to 1"),
        ({"evaluation": {"metrics": ["coherence", "fid"]}}, "evaluation.metrics", "unknown metrics ['fid']"),
        ({"model": {"latnt_dim": 3}}, "model.latnt_dim", "Extra inputs are not permitted"),
    ],
)
def test_invalid_values_name_the_field(tree, field, hint):
    with pytest.raises(ConfigError) as error:
        build_config(tree)
    message = str(error.value)
    assert f"{field}:" in message
    assert hint in message


def test_unknown_aggregator_lists_the_registered_ones():
    with pytest.raises(ConfigError) as error:
        build_config({"model": {"aggregator": "pope"}})
    for name in ("poe", "moe", "mopoe", "mmjsd"):
        assert name in str(error.value)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  aggregator: poe\n  beta: 1.0\ndata:\n  batch_size: 32\n")
    config = load_config(path, ["model.beta=2.5", "data.modalities=[m0, m2]", "model.aggregator_options.prior_expert=full_set"])
    assert config.model.aggregator == "poe"
    assert config.model.beta == 2.5
    assert config.data.batch_size == 32
    assert config.data.modalities == ["m0", "m2"]
    assert config.model.aggregator_options == {"prior_expert": "full_set"}


def test_bad_files_and_overrides_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["model.beta"])


def test_modalities_must_exist_in_the_dataset(polymnist_shards):
    from data_pipelines.manifest import load_manifest

    manifest = load_manifest(polymnist_shards / "train")  # m0, m1, m2
    config = build_config({"data": {"modalities": ["m0", "m7"]}})
    with pytest.raises(ConfigError, match=r"data.modalities: \['m7'\] not in the dataset"):
        check_against_dataset(config, manifest)
    check_against_dataset(build_config({"data": {"modalities": ["m1"]}}), manifest)


def test_workers_must_fit_the_cluster():
    config = build_config({"scaling": {"num_workers": 3, "cpus_per_worker": 2}})
    with pytest.raises(ConfigError, match=r"scaling.num_workers: 3 workers .* need 6 CPUs; the cluster has 4 \(at most 2 workers\)"):
        check_against_cluster(config, {"CPU": 4.0})
    check_against_cluster(config, {"CPU": 6.0})
    gpu = build_config({"scaling": {"num_workers": 2, "use_gpu": True}})
    with pytest.raises(ConfigError, match="need 2 GPUs; the cluster has 1"):
        check_against_cluster(gpu, {"CPU": 8.0, "GPU": 1.0})


def test_hparams_are_flat_and_use_the_names_users_query():
    config = TrainConfig.model_validate(
        {"model": {"aggregator": "mopgfm", "beta": 2.0, "aggregator_options": {"num_flows": 2}},
         "tracking": {"tags": {"sweep": "s", "trial_id": "t1"}}}
    )
    hparams = config.flat_hparams()
    assert hparams["aggregator"] == "mopgfm" and hparams["beta"] == 2.0
    assert hparams["num_flows"] == 2 and hparams["sweep"] == "s" and hparams["trial_id"] == "t1"
    assert all(not isinstance(value, (dict, list)) for value in hparams.values())
    # A list option (mmJSD's weights) is not a flat hparam.
    weights = build_config({"model": {"aggregator": "mmjsd", "aggregator_options": {"weights": [0.5, 0.25, 0.25]}}})
    assert "weights" not in weights.flat_hparams()


def _manifest(*specs):
    from data_pipelines.manifest import Manifest

    return Manifest(dataset="polymnist", version="1", split="train", modalities=tuple(specs), label_kind="single",
                    label_names=tuple("0123456789"), num_samples=1, samples_per_shard=1, shards=())


def _image(name):
    from data_pipelines.modality import ModalitySpec

    return ModalitySpec(name=name, kind="image", shape=(3, 28, 28), dtype="uint8", likelihood="laplace")


def test_likelihood_overrides_reach_the_model():
    """``model.likelihoods``: "*" sets every modality, a modality's own entry replaces "*"."""
    from models.likelihoods import GaussianLikelihood, LaplaceLikelihood

    from mmplatform.training.model_factory import build_model

    manifest = _manifest(_image("m0"), _image("m1"), _image("m2"))
    config = build_config({"model": {"latent_dim": 4, "likelihoods": {
        "*": {"kind": "gaussian", "scale": 0.1}, "m2": {"scale": 0.5}}}})
    model = build_model(config, manifest)
    for name in ("m0", "m1"):
        assert isinstance(model.likelihoods[name], GaussianLikelihood) and model.likelihoods[name].scale == 0.1
    assert isinstance(model.likelihoods["m2"], LaplaceLikelihood) and model.likelihoods["m2"].scale == 0.5
    assert config.flat_hparams()["likelihood"] == "*=gaussian(0.1),m2=manifest(0.5)"
    default = build_model(build_config({"model": {"latent_dim": 4}}), manifest)
    assert all(isinstance(lik, LaplaceLikelihood) and lik.scale == 0.75 for lik in default.likelihoods.values())
    assert build_config({}).flat_hparams()["likelihood"] == "manifest"


def test_bad_likelihood_overrides_name_the_field():
    from data_pipelines.modality import ModalitySpec

    from mmplatform.training.model_factory import selected_specs

    with pytest.raises(ConfigError, match=r"model.likelihoods.m0.kind.*unknown likelihood 'poisson'; registered: "):
        build_config({"model": {"likelihoods": {"m0": {"kind": "poisson"}}}})
    with pytest.raises(ConfigError, match=r"model.likelihoods.m0.scale"):
        build_config({"model": {"likelihoods": {"m0": {"scale": 0}}}})
    with pytest.raises(ConfigError, match=r"model.likelihoods: \['m9'\] not in the dataset"):
        selected_specs(build_config({"model": {"likelihoods": {"m9": {"scale": 0.1}}}}), _manifest(_image("m0")))
    text = ModalitySpec(name="text", kind="text", shape=(8,), dtype="int64", likelihood="categorical",
                        vocabulary=tuple("abcdefgh"))
    config = build_config({"model": {"likelihoods": {"*": {"scale": 0.1}}}})
    with pytest.raises(ConfigError, match=r"model.likelihoods.\*: likelihood 'categorical' of modality 'text'"):
        selected_specs(config, _manifest(_image("img"), text))


def test_network_choices_reach_the_model_and_the_hparams():
    """``model.networks``: a registered option replaces the papers' nets only where asked."""
    from models.networks.polymnist import PolyMNISTConvHeadsEncoder, PolyMNISTEncoder

    from mmplatform.training.model_factory import build_model

    manifest = _manifest(_image("m0"), _image("m1"))
    config = build_config({"model": {"latent_dim": 4, "networks": {"m1": "polymnist_conv_heads"}}})
    model = build_model(config, manifest)
    assert type(model.encoders["m0"]) is PolyMNISTEncoder
    assert type(model.encoders["m1"]) is PolyMNISTConvHeadsEncoder
    assert config.flat_hparams()["networks"] == "m1=polymnist_conv_heads"
    everywhere = build_model(build_config({"model": {"latent_dim": 4, "networks": {"*": "polymnist_conv_heads"}}}),
                             manifest)
    assert all(type(encoder) is PolyMNISTConvHeadsEncoder for encoder in everywhere.encoders.values())
    assert build_config({}).flat_hparams()["networks"] == "default"


def test_bad_network_choices_name_the_field():
    from data_pipelines.modality import ModalitySpec

    from mmplatform.training.model_factory import selected_networks

    with pytest.raises(ConfigError, match=r"model.networks: unknown networks \['resnet'\]; registered: "):
        build_config({"model": {"networks": {"*": "resnet"}}})
    text = ModalitySpec(name="text", kind="text", shape=(8,), dtype="int64", likelihood="categorical",
                        vocabulary=tuple("abcdefgh"))
    config = build_config({"model": {"networks": {"*": "polymnist_conv_heads"}}})
    with pytest.raises(ConfigError, match=r"model.networks.\*: networks 'polymnist_conv_heads' do not fit modality 'text'"):
        selected_networks(config, [_image("img"), text])
    with pytest.raises(ConfigError, match=r"model.networks: \['m9'\] not in the dataset"):
        from mmplatform.training.model_factory import selected_specs

        selected_specs(build_config({"model": {"networks": {"m9": "polymnist_conv"}}}), _manifest(_image("m0")))


def test_a_profiles_budget_choices_are_in_the_hparams():
    hparams = build_config({"data": {"steps_per_epoch": 200}, "evaluation": {"sample_limit": 500}}).flat_hparams()
    assert hparams["steps_per_epoch"] == 200 and hparams["eval_sample_limit"] == 500
    assert build_config({}).flat_hparams()["steps_per_epoch"] is None  # one pass over the split
