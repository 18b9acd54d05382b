"""Datasets and metrics as plug-ins: every registration is complete and consistent, nothing
outside a dataset's package names a dataset, and a config a dataset cannot take is refused
before Ray starts with one line naming what is wrong."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.datasets import LABEL_KIND_RULES, registered_datasets
from mmplatform.config import ConfigError, build_config, check_against_dataset
from mmplatform.evaluation.metrics import METRICS, objective_keys

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(registered_datasets()))
def test_every_descriptor_names_registered_parts(name):
    from mmplatform.coherence_classifiers import LOSSES, SCORES
    from mmplatform.evaluation.accumulators import ACCUMULATORS
    from mmplatform.sweep.profiles import PROFILES
    from models.classifiers import CLASSIFIERS
    from models.networks import NETWORKS

    descriptor = registered_datasets()[name]
    rules = LABEL_KIND_RULES[descriptor.label_kind]
    assert rules.classifier_loss in LOSSES and rules.classifier_score in SCORES
    for modality in descriptor.modalities:
        assert descriptor.classifier_for(modality).architecture in CLASSIFIERS
        network = descriptor.network_for(modality)
        assert network is None or network in NETWORKS
    for metric in descriptor.metrics:
        assert metric in ACCUMULATORS and descriptor.label_kind in METRICS[metric].label_kinds
    assert set(descriptor.objective_weights) <= set(objective_keys(descriptor.metrics))
    assert set(descriptor.profiles) == set(PROFILES)
    # The dataset's defaults form a valid config.
    config = build_config({"data": {"dataset": name}})
    assert config.evaluation.metrics == list(descriptor.metrics)
    assert config.evaluation.min_classifier_score == rules.default_min_score


def test_every_metric_has_an_accumulator_and_unique_result_names():
    from mmplatform.evaluation.accumulators import ACCUMULATORS

    assert set(ACCUMULATORS) == set(METRICS)
    assert len({metric.objective_key for metric in METRICS.values()}) == len(METRICS)


def _string_literals(path: Path) -> set[str]:
    """String constants of a module's code, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_module_of_the_platform_names_a_dataset():
    """Config checks, classifiers, evaluation, sweeps and the CLI read descriptors; a dataset name
    in their code would be a special case the next dataset does not get."""
    names = set(registered_datasets())
    offenders = {
        str(path.relative_to(REPO)): sorted(literal for literal in _string_literals(path) if literal in names)
        for path in sorted((REPO / "mmplatform").rglob("*.py"))
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_data_cli_offers_every_registered_dataset():
    completed = subprocess.run([sys.executable, "-m", "mmplatform", "data", "--help"], capture_output=True,
                               text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 0
    for name in registered_datasets():
        assert f"    {name}" in completed.stdout


def _manifest(dataset: str, label_kind: str, label_names):
    from data_pipelines.manifest import Manifest
    from data_pipelines.modality import ModalitySpec

    spec = ModalitySpec("image", "image", (3, 64, 64), "uint8", "laplace")
    text = ModalitySpec("text", "text", (256,), "uint8", "categorical", tuple("ab*"))
    return Manifest(dataset=dataset, version="1", split="train", modalities=(spec, text), label_kind=label_kind,
                    label_names=tuple(label_names), num_samples=1, samples_per_shard=1, shards=())


def test_accuracy_metrics_on_multi_label_data_are_refused_naming_metric_and_dataset():
    manifest = _manifest("celeba", "multi", ["Smiling", "Young"])
    config = build_config({"data": {"dataset": "celeba"}, "evaluation": {"metrics": ["coherence", "prd"]}})
    with pytest.raises(ConfigError) as error:
        check_against_dataset(config, manifest)
    message = str(error.value)
    assert "\n" not in message
    assert "'coherence'" in message and "'celeba'" in message and "multi-label" in message
    assert "coherence_ap" in message  # the metric that does apply
    check_against_dataset(build_config({"data": {"dataset": "celeba"}}), manifest)  # the defaults fit


def test_label_metrics_on_a_dataset_built_without_labels_are_refused_naming_the_reason():
    """CUB from the MMVAE release has no attribute file: its manifests say label kind ``none``."""
    manifest = _manifest("cub", "none", [])
    with pytest.raises(ConfigError) as error:
        check_against_dataset(build_config({"data": {"dataset": "cub"}}), manifest)  # the colour-group defaults
    message = str(error.value)
    assert "\n" not in message
    assert "'coherence_ap'" in message and "needs labels" in message
    assert "dataset 'cub' was built without labels" in message and "metrics that apply: log_likelihood" in message
    with pytest.raises(ConfigError, match=r"'prd' .* needs coherence classifiers, which train on labels; dataset"):
        check_against_dataset(build_config({"data": {"dataset": "cub"},
                                            "evaluation": {"metrics": ["prd"], "objective_weights": {"prd": 1.0}}}), manifest)
    check_against_dataset(build_config({"data": {"dataset": "cub"}, "evaluation": {
        "metrics": ["log_likelihood"], "objective_weights": {"log_likelihood": 1.0}}}), manifest)


def test_objective_weights_must_name_a_result_of_the_metrics():
    manifest = _manifest("celeba", "multi", ["Smiling"])
    config = build_config({"data": {"dataset": "celeba"},
                           "evaluation": {"objective_weights": {"coherence_missing": 1.0}}})
    with pytest.raises(ConfigError, match=r"evaluation.objective_weights: \['coherence_missing'\] are produced by none"):
        check_against_dataset(config, manifest)


def test_shards_of_another_dataset_are_refused():
    manifest = _manifest("celeba", "multi", ["Smiling"])
    with pytest.raises(ConfigError, match="data.dataset: is 'polymnist' but the shards .* hold 'celeba'"):
        check_against_dataset(build_config({}), manifest)


def test_unknown_dataset_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"data.dataset: unknown dataset 'mnist'; registered: celeba, cub, mimic, polymnist"):
        build_config({"data": {"dataset": "mnist"}})


@pytest.mark.parametrize(
    ("aggregator", "options", "expected"),
    [
        # Once a silent failure: a flag where a mode is meant.
        ("mopoe", {"prior_expert": True}, "model.aggregator_options: prior_expert: Input should be 'none', 'full_set' or 'all_subsets'"),
        ("mopgfm", {"num_flow": 2}, "model.aggregator_options: num_flow: not an option of mopgfm (its options: flow_backend"),
        ("mofop", {"coupling_width": "wide"}, "model.aggregator_options: coupling_width: Input should be a valid integer"),
    ],
)
def test_bad_aggregator_options_fail_in_the_config_naming_the_option(aggregator, options, expected):
    with pytest.raises(ConfigError) as error:
        build_config({"model": {"aggregator": aggregator, "aggregator_options": options}})
    assert expected in str(error.value)


def test_aggregator_options_are_typed_once_from_the_aggregator():
    from models.aggregators import AGGREGATORS
    from models.aggregators.base import options_model

    config = build_config({"model": {"aggregator": "mopgfm", "aggregator_options": {"clamp": 2, "num_flows": "3"}}})
    assert config.model.aggregator_options == {"clamp": 2.0, "num_flows": 3}
    assert isinstance(config.model.aggregator_options["clamp"], float)
    for name in AGGREGATORS:  # every aggregator's defaults are valid options of its own
        options_model(name).model_validate({})


def test_option_values_the_aggregator_refuses_fail_in_preflight(polymnist_shards):
    from mmplatform.training.launcher import check_config_fits_dataset

    config = build_config({"data": {"path": str(polymnist_shards)}, "model": {
        "aggregator": "mopgfm", "latent_dim": 4, "aggregator_options": {"variance_domain": "cubic"}}})
    with pytest.raises(ConfigError, match="model.aggregator_options: mopgfm refuses them: unknown variance_domain 'cubic'"):
        check_config_fits_dataset(config)
