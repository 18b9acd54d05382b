"""Build the MultimodalVAE a config asks for, from the dataset's manifest."""

from __future__ import annotations

import dataclasses

from data_pipelines.manifest import Manifest
from data_pipelines.modality import ModalitySpec
from mmplatform.config import ConfigError, TrainConfig, check_against_dataset, per_modality
from models.likelihoods import build_likelihood
from models.vae import MultimodalVAE


def selected_specs(config: TrainConfig, manifest: Manifest) -> tuple[list[ModalitySpec], dict[str, dict]]:
    """The modalities to train, with ``model.likelihoods`` applied, and each one's likelihood options.

    Called on the driver before any Ray resource is requested, so a likelihood that cannot be
    built (a scale on a categorical text likelihood) fails there, naming the field.
    """
    names = [spec.name for spec in manifest.modalities]
    check_against_dataset(config, names)
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
    """Per modality, the network entry ``model.networks`` names, checked to fit the modality."""
    from models.networks import NETWORKS

    networks = {}
    for spec in specs:
        chosen = per_modality(config.model.networks, spec.name)
        if chosen is None:
            continue
        key, name = chosen
        if not NETWORKS[name].matches(spec):
            raise ConfigError(
                f"model.networks.{key}: networks {name!r} do not fit modality {spec.name!r} "
                f"({spec.kind}, shape {list(spec.shape)})"
            )
        networks[spec.name] = name
    return networks


def build_model(config: TrainConfig, manifest: Manifest) -> MultimodalVAE:
    specs, likelihood_options = selected_specs(config, manifest)
    return MultimodalVAE(
        specs,
        networks=selected_networks(config, specs),
        aggregator=config.model.aggregator,
        latent_dim=config.model.latent_dim,
        beta=config.model.beta,
        num_importance_samples=config.model.num_importance_samples,
        aggregator_options=config.model.aggregator_options,
        likelihood_options=likelihood_options,
    )
