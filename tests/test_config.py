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
    config = load_config(path, ["model.beta=2.5", "data.modalities=[m0, m2]", "model.aggregator_options.k=3"])
    assert config.model.aggregator == "poe"
    assert config.model.beta == 2.5
    assert config.data.batch_size == 32
    assert config.data.modalities == ["m0", "m2"]
    assert config.model.aggregator_options == {"k": 3}


def test_bad_files_and_overrides_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["model.beta"])


def test_modalities_must_exist_in_the_dataset():
    config = build_config({"data": {"modalities": ["m0", "m7"]}})
    with pytest.raises(ConfigError, match=r"data.modalities: \['m7'\] not in the dataset"):
        check_against_dataset(config, ["m0", "m1", "m2"])
    check_against_dataset(build_config({"data": {"modalities": ["m1"]}}), ["m0", "m1"])


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
        {"model": {"aggregator": "mopoe", "beta": 2.0, "aggregator_options": {"num_flows": 2, "nested": {"x": 1}}},
         "tracking": {"tags": {"sweep": "s", "trial_id": "t1"}}}
    )
    hparams = config.flat_hparams()
    assert hparams["aggregator"] == "mopoe" and hparams["beta"] == 2.0
    assert hparams["num_flows"] == 2 and hparams["sweep"] == "s" and hparams["trial_id"] == "t1"
    assert all(not isinstance(value, (dict, list)) for value in hparams.values())
