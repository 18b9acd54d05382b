"""Build the MultimodalVAE a config asks for, from the dataset's manifest."""

from __future__ import annotations

from data_pipelines.manifest import Manifest
from mmplatform.config import TrainConfig, check_against_dataset
from models.vae import MultimodalVAE


def selected_specs(config: TrainConfig, manifest: Manifest):
    names = [spec.name for spec in manifest.modalities]
    check_against_dataset(config, names)
    wanted = config.data.modalities or names
    return [spec for spec in manifest.modalities if spec.name in wanted]


def build_model(config: TrainConfig, manifest: Manifest) -> MultimodalVAE:
    return MultimodalVAE(
        selected_specs(config, manifest),
        aggregator=config.model.aggregator,
        latent_dim=config.model.latent_dim,
        beta=config.model.beta,
        num_importance_samples=config.model.num_importance_samples,
        aggregator_options=config.model.aggregator_options,
    )
