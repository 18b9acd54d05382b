"""The ``aggregator`` family: ``MultimodalVAE`` + an aggregator chosen by ``model.aggregator``.

One stage over every parameter; the objective is ``models.objective``'s, shared by every
aggregator. The default family: every config written before families existed means this.
"""

from __future__ import annotations

from models.families.base import ModelFamily, ModelRequest, NoOptions, Stage, register_family
from models.vae import MultimodalVAE


def build(request: ModelRequest, options: NoOptions) -> MultimodalVAE:
    return MultimodalVAE(
        request.specs,
        networks=request.networks,
        aggregator=request.aggregator,
        latent_dim=request.latent_dim,
        beta=request.beta,
        num_importance_samples=request.num_importance_samples,
        aggregator_options=request.aggregator_options,
        likelihood_options=request.likelihood_options,
        style_latent_dim=request.style_latent_dim,
        style_beta=request.style_beta,
    )


AGGREGATOR = register_family(ModelFamily(
    name="aggregator",
    summary="one shared latent fused from the unimodal posteriors by an aggregator (model.aggregator)",
    build=build,
    stages=lambda options, epochs: [Stage("train", epochs)],
))
