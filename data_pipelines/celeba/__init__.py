"""Bimodal CelebA (image + attribute text, MoPoE/mmJSD): official files -> shards.

Modules: ``source`` (the official files, read and checked), ``image`` (crop and resize),
``text`` (the attribute sentence and its character ids), ``builder`` (``build_celeba``),
``fixture`` (a small CelebA in the official layout, for tests and benchmarks).

The names below are loaded on first use (PEP 562): importing ``builder`` pulls in the shard
writer and with it webdataset and torch (about two seconds), which the builder's spawned
image workers and the fixture writer, both importing this package, should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_celeba": "builder",
    "modality_specs": "builder",
    "DATASET": "builder",
    "DEFAULT_SAMPLES_PER_SHARD": "builder",
    "CelebAError": "source",
    "CelebASource": "source",
    "read_source": "source",
    "ATTRIBUTE_NAMES": "source",
    "ALPHABET": "text",
    "PAD": "text",
    "SEQUENCE_LENGTH": "text",
    "TEXT_OFFSETS": "text",
    "AttributeTextEncoder": "text",
    "attribute_text": "text",
    "encode_text": "text",
    "decode_text": "text",
    "random_offset": "text",
    "IMAGE_SHAPE": "image",
    "preprocess": "image",
    "load_image": "image",
    "write_celeba_fixture": "fixture",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from data_pipelines.celeba.builder import DATASET, DEFAULT_SAMPLES_PER_SHARD, build_celeba, modality_specs
    from data_pipelines.celeba.fixture import write_celeba_fixture
    from data_pipelines.celeba.image import IMAGE_SHAPE, load_image, preprocess
    from data_pipelines.celeba.source import ATTRIBUTE_NAMES, CelebAError, CelebASource, read_source
    from data_pipelines.celeba.text import (
        ALPHABET,
        PAD,
        SEQUENCE_LENGTH,
        TEXT_OFFSETS,
        AttributeTextEncoder,
        attribute_text,
        decode_text,
        encode_text,
        random_offset,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
