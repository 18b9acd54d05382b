"""MIMIC-CXR (frontal and lateral chest radiographs, report findings, CheXpert labels): official files -> shards.

Modules: ``source`` (MIMIC-CXR-JPG 2.0.0's CSVs, images and the MIMIC-CXR reports, read and
checked), ``report`` (the FINDINGS section of a report), ``image`` (grayscale, centre square,
antialiased resize), ``builder`` (``build_mimic`` and its ``VARIANTS``), ``fixture`` (a small
MIMIC-CXR in the official layout, for tests and benchmarks). Word tokens, vocabulary and ids
are ``data_pipelines.words``'.

MIMIC-CXR is credentialed data: every manifest the builder writes is ``restricted``.

The names below are loaded on first use (PEP 562): importing ``builder`` pulls in the shard
writer and with it webdataset and torch (about two seconds), which the builder's spawned
image workers and the fixture writer, both importing this package, should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_mimic": "builder",
    "modality_specs": "builder",
    "DATASET": "builder",
    "DEFAULT_SAMPLES_PER_SHARD": "builder",
    "VARIANTS": "builder",
    "Variant": "builder",
    "THESIS_LABELS": "builder",
    "SKIP_REASONS": "builder",
    "SPLITS": "builder",
    "TEXT_LENGTH": "builder",
    "FRONTAL": "builder",
    "LATERAL": "builder",
    "TEXT": "builder",
    "MIMICError": "source",
    "MIMICSource": "source",
    "Study": "source",
    "read_source": "source",
    "CHEXPERT_LABELS": "source",
    "CSV_FILES": "source",
    "extract_findings": "report",
    "load_image": "image",
    "preprocess": "image",
    "decode_text": "words",
    "word_tokenize": "words",
    "SPECIAL_TOKENS": "words",
    "write_mimic_fixture": "fixture",
    "synthetic_subjects": "fixture",
}
_MODULES = {"words": "data_pipelines.words"}
"""Exports that live outside this package."""

__all__ = [
    "CHEXPERT_LABELS", "CSV_FILES", "DATASET", "DEFAULT_SAMPLES_PER_SHARD", "FRONTAL", "LATERAL", "MIMICError",
    "MIMICSource", "SKIP_REASONS", "SPECIAL_TOKENS", "SPLITS", "Study", "TEXT", "TEXT_LENGTH", "THESIS_LABELS",
    "VARIANTS", "Variant", "build_mimic", "decode_text", "extract_findings", "load_image", "modality_specs",
    "preprocess", "read_source", "synthetic_subjects", "word_tokenize", "write_mimic_fixture",
]
"""The names of ``_EXPORTS``, spelt out so that linters see them used (a test checks they agree)."""

if TYPE_CHECKING:
    from data_pipelines.mimic.builder import (
        DATASET,
        DEFAULT_SAMPLES_PER_SHARD,
        FRONTAL,
        LATERAL,
        SKIP_REASONS,
        SPLITS,
        TEXT,
        TEXT_LENGTH,
        THESIS_LABELS,
        VARIANTS,
        Variant,
        build_mimic,
        modality_specs,
    )
    from data_pipelines.mimic.fixture import synthetic_subjects, write_mimic_fixture
    from data_pipelines.mimic.image import load_image, preprocess
    from data_pipelines.mimic.report import extract_findings
    from data_pipelines.mimic.source import CHEXPERT_LABELS, CSV_FILES, MIMICError, MIMICSource, Study, read_source
    from data_pipelines.words import SPECIAL_TOKENS, decode_text, word_tokenize


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES.get(module, f"{__name__}.{module}")), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
