"""What one modality of a dataset is: the contract between shards, readers and models.

A ``ModalitySpec`` is written into every ``manifest.json`` by the dataset builders and read
back by the readers (which check the shards against it) and by ``models`` (which builds one
encoder, decoder and likelihood per spec). It serves every dataset of the platform: images
of any size and channel count (PolyMNIST 3x28x28, CelebA 3x64x64, MIMIC-CXR 1x128x128) and
text as token ids over a vocabulary or a character alphabet (CelebA, CUB, MIMIC reports).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

ModalityKind = Literal["image", "text"]
Likelihood = Literal["laplace", "gaussian", "bernoulli", "categorical"]


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    """Member name in the shards (``<name>.npy``) and key of the batch dict, e.g. ``m0``."""

    kind: ModalityKind
    shape: tuple[int, ...]
    """Per-sample array shape as stored: images ``(C, H, W)``, text ``(sequence_length,)``."""

    dtype: str
    """numpy dtype name as stored: ``uint8`` images, ``int64`` (or ``int32``) token ids."""

    likelihood: Likelihood
    """Decoder likelihood: Laplace (scale 0.75) for images as in the papers, categorical for text."""

    vocabulary: tuple[str, ...] = field(default_factory=tuple)
    """Text only: the token (word or character) of each id; empty for images."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["vocabulary"] = list(self.vocabulary)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ModalitySpec":
        return cls(
            name=data["name"],
            kind=data["kind"],
            shape=tuple(int(n) for n in data["shape"]),
            dtype=data["dtype"],
            likelihood=data["likelihood"],
            vocabulary=tuple(data.get("vocabulary", ())),
        )
