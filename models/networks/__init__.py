"""Encoder/decoder registry: the networks of a modality are chosen from its ``ModalitySpec``.

Each entry says which specs it fits (``matches``) and builds an encoder ``x -> (mu, logvar)``
(``[B, D]`` each) and a decoder ``z [N, D] -> params`` for the modality's likelihood (image
location/logits ``[N, C, H, W]``, text logits ``[N, L, V]``). ``build_networks`` takes an explicit
entry name or else the matching entry of highest priority, so dataset-specific nets (PolyMNIST
conv nets) win over the generic fallbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from data_pipelines.modality import ModalitySpec


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    matches: Callable[[ModalitySpec], bool]
    encoder: Callable[[ModalitySpec, int], nn.Module]
    decoder: Callable[[ModalitySpec, int], nn.Module]
    priority: int = 0


NETWORKS: dict[str, NetworkEntry] = {}


def register_networks(entry: NetworkEntry) -> NetworkEntry:
    if entry.name in NETWORKS:
        raise ValueError(f"networks {entry.name!r} registered twice")
    NETWORKS[entry.name] = entry
    return entry


def select_networks(spec: ModalitySpec, name: str | None = None) -> NetworkEntry:
    if name is not None:
        if name not in NETWORKS:
            raise ValueError(f"unknown networks {name!r}; registered: {', '.join(sorted(NETWORKS))}")
        return NETWORKS[name]
    candidates = [entry for entry in NETWORKS.values() if entry.matches(spec)]
    if not candidates:
        raise ValueError(f"no registered networks fit modality {spec.name!r} ({spec.kind}, {spec.shape})")
    return max(candidates, key=lambda entry: entry.priority)


def build_networks(spec: ModalitySpec, latent_dim: int, name: str | None = None) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` for ``spec``."""
    entry = select_networks(spec, name)
    return entry.encoder(spec, latent_dim), entry.decoder(spec, latent_dim)


# Importing the modules registers their entries.
from models.networks import celeba, generic, polymnist, resnet_image, words  # noqa: E402,F401
