"""CUB image-captions (MMVAE, MMVM): either official form -> shards.

Modules: ``source`` (the release ``cub.zip`` and CUB_200_2011 as MMVM reads it, read and
checked), ``image`` (64x64 resize), ``text`` (CUB's caption ids, over the shared ``data_pipelines.words``),
``builder`` (``build_cub``), ``fixture`` (small datasets in both exact layouts, for tests and
benchmarks).

The names below are loaded on first use (PEP 562): importing ``builder`` pulls in the shard
writer and with it webdataset and torch (about two seconds), which the builder's spawned
image workers and the fixture writers, both importing this package, should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_cub": "builder",
    "modality_specs": "builder",
    "DATASET": "builder",
    "DEFAULT_SAMPLES_PER_SHARD": "builder",
    "CUBError": "source",
    "CUBSource": "source",
    "CUBSplit": "source",
    "read_source": "source",
    "merge_colours": "source",
    "COLOUR_GROUPS": "source",
    "GROUP_NAMES": "source",
    "PRIMARY_COLOURS": "source",
    "SPECIAL_TOKENS": "text",
    "SEQUENCE_LENGTH": "text",
    "MIN_COUNT": "text",
    "CaptionEncoder": "text",
    "build_vocabulary": "text",
    "decode_text": "text",
    "encode_tokens": "text",
    "split_sentences": "text",
    "word_tokenize": "text",
    "IMAGE_SHAPE": "image",
    "load_image": "image",
    "preprocess": "image",
    "write_cub_release_fixture": "fixture",
    "write_cub_200_2011_fixture": "fixture",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from data_pipelines.cub.builder import DATASET, DEFAULT_SAMPLES_PER_SHARD, build_cub, modality_specs
    from data_pipelines.cub.fixture import write_cub_200_2011_fixture, write_cub_release_fixture
    from data_pipelines.cub.image import IMAGE_SHAPE, load_image, preprocess
    from data_pipelines.cub.source import (
        COLOUR_GROUPS,
        GROUP_NAMES,
        PRIMARY_COLOURS,
        CUBError,
        CUBSource,
        CUBSplit,
        merge_colours,
        read_source,
    )
    from data_pipelines.cub.text import (
        MIN_COUNT,
        SEQUENCE_LENGTH,
        SPECIAL_TOKENS,
        CaptionEncoder,
        build_vocabulary,
        decode_text,
        encode_tokens,
        split_sentences,
        word_tokenize,
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
