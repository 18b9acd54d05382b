"""Build the model a config asks for (its family's), from the dataset's manifest."""

from __future__ import annotations

import dataclasses

from torch import nn

from data_pipelines.manifest import Manifest
from data_pipelines.modality import ModalitySpec
from mmplatform.config import ConfigError, TrainConfig, check_against_dataset, per_modality
from models.likelihoods import build_likelihood


def selected_specs(config: TrainConfig, manifest: Manifest) -> tuple[list[ModalitySpec], dict[str, dict]]:
    """The modalities to train, with ``model.likelihoods`` applied, and each one's likelihood options.

    Called on the driver before any Ray resource is requested, so a likelihood that cannot be
    built (a scale on a categorical text likelihood) fails there, naming the field.
    """
    names = [spec.name for spec in manifest.modalities]
    check_against_dataset(config, manifest)
    wanted = config.data.modalities or names
    choices = config.model.likelihoods
    specs, options = [], {}
    for spec in manifest.modalities:
        if spec.name not in wanted:
            continue
        chosen = per_modality(choices, spec.name)
        if chosen is not None:
            key, choice = chosen
            if choice.kind is not None:
                spec = dataclasses.replace(spec, likelihood=choice.kind)
            if choice.scale is not None:
                options[spec.name] = {"scale": choice.scale}
            try:
                build_likelihood(spec.likelihood, **options.get(spec.name, {}))
            except TypeError as error:
                raise ConfigError(
                    f"model.likelihoods.{key}: likelihood {spec.likelihood!r} of modality {spec.name!r} "
                    f"does not take these options ({error})"
                ) from error
        specs.append(spec)
    return specs, options


def selected_networks(config: TrainConfig, specs: list[ModalitySpec]) -> dict[str, str]:
    """Per modality, the network entry ``model.networks`` names, else the dataset's descriptor
    names, checked to fit the modality."""
    from data_pipelines.datasets import dataset_descriptor
    from models.networks import NETWORKS

    descriptor = dataset_descriptor(config.data.dataset)
    networks = {}
    for spec in specs:
        chosen = per_modality(config.model.networks, spec.name)
        if chosen is None:
            name = descriptor.network_for(spec.name)
            if name is None:
                continue
            key, where = spec.name, f"the {descriptor.name} descriptor's networks"
        else:
            key, name = chosen
            where = f"model.networks.{key}"
        if not NETWORKS[name].matches(spec):
            raise ConfigError(
                f"{where}: networks {name!r} do not fit modality {spec.name!r} "
                f"({spec.kind}, shape {list(spec.shape)})"
            )
        networks[spec.name] = name
    return networks


def check_aggregator(config: TrainConfig, num_modalities: int) -> None:
    """Build the configured aggregator once on the driver: option values its constructor refuses
    (an unknown flow back end, a weight list of the wrong length) fail here, not in a worker."""
    from models.aggregators import build_aggregator

    try:
        build_aggregator(config.model.aggregator, num_modalities, config.model.latent_dim,
                         **config.model.aggregator_options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.aggregator_options: {config.model.aggregator} refuses them: {error}") from None


def model_family_of(config: TrainConfig):
    """The config's model family (``models.families``)."""
    from models.families import model_family

    return model_family(config.model.family)


def build_model(config: TrainConfig, manifest: Manifest) -> nn.Module:
    """The model of the config's family, built from the dataset's modalities."""
    from models.families import ModelRequest

    specs, likelihood_options = selected_specs(config, manifest)
    family = model_family_of(config)
    request = ModelRequest(
        specs=specs,
        networks=selected_networks(config, specs),
        likelihood_options=likelihood_options,
        latent_dim=config.model.latent_dim,
        beta=config.model.beta,
        num_importance_samples=config.model.num_importance_samples,
        aggregator=config.model.aggregator,
        aggregator_options=config.model.aggregator_options,
        style_latent_dim=config.model.style_latent_dim,
        style_beta=config.model.style_beta,
    )
    return family.build(request, family.parse_options(config.model.family_options))
