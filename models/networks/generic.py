"""Small fallbacks for modalities without dedicated nets: one-hidden-layer MLPs.

Images of any ``(C, H, W)`` are flattened; text ids ``[B, L]`` are embedded and flattened, and
the decoder emits logits ``[N, L, V]``. Meant for tests and new datasets until they get
dedicated architectures, not for reproducing paper numbers.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.networks import NetworkEntry, register_networks

HIDDEN = 256
EMBEDDING = 32


class MLPEncoder(nn.Module):
    def __init__(self, in_features: int, latent_dim: int, embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.embedding is not None:
            x = self.embedding(x.long())
        mu, logvar = self.body(x).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.body = nn.Sequential(nn.Linear(latent_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, math.prod(out_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z).reshape(z.shape[0], *self.out_shape)


def _text_shape(spec: ModalitySpec) -> tuple[int, int]:
    if not spec.vocabulary:
        raise ValueError(f"text modality {spec.name!r} has no vocabulary")
    return spec.shape[0], len(spec.vocabulary)


register_networks(
    NetworkEntry(
        name="mlp_image",
        matches=lambda spec: spec.kind == "image",
        encoder=lambda spec, d: MLPEncoder(math.prod(spec.shape), d),
        decoder=lambda spec, d: MLPDecoder(d, tuple(spec.shape)),
    )
)
register_networks(
    NetworkEntry(
        name="mlp_text",
        matches=lambda spec: spec.kind == "text",
        encoder=lambda spec, d: MLPEncoder(
            _text_shape(spec)[0] * EMBEDDING, d, nn.Embedding(_text_shape(spec)[1], EMBEDDING)
        ),
        decoder=lambda spec, d: MLPDecoder(d, _text_shape(spec)),
    )
)
