"""``manifest.json``: what one split's shards hold, written last by the builder.

A split directory (``OUT/train``, ``OUT/test``) holds ``shard-000000.tar ...`` and one
``manifest.json``. The readers trust nothing else: the modality specs say which members a
sample has and their shape and dtype, the shard list says how many samples each shard
holds and its size and sha256, so a missing, truncated or foreign shard is caught by name.
Validation happens here, once, with errors naming the file and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.modality import ModalitySpec

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
"""Bumped when the shard or manifest layout changes; readers refuse other versions."""

LABELS_MEMBER = "labels.npy"

_MODALITY_KINDS = ("image", "text")
_LIKELIHOODS = ("laplace", "gaussian", "bernoulli", "categorical")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.tar$")
_NUMERIC_DTYPE_KINDS = "biuf"
"""bool, signed and unsigned integers, floats: what modality arrays hold (and what ``.npy`` stores without pickling)."""
_TOP_FIELDS = ("format_version", "dataset", "version", "split", "modalities", "label_kind", "label_names",
               "num_samples", "samples_per_shard", "dropped_samples", "shards", "builder", "source", "seed",
               "restricted")
_MODALITY_FIELDS = ("name", "kind", "shape", "dtype", "likelihood", "vocabulary")
_SHARD_FIELDS = ("name", "num_samples", "size", "sha256")


@dataclass(frozen=True)
class LabelKind:
    """How labels are stored in ``labels.npy`` and handed to models."""

    name: str
    stored_dtype: str
    stored_ndim: int
    """0: one class index per sample; 1: a multi-hot vector over ``label_names``."""
    has_labels: bool = True
    """False: the dataset carries no labels (``label_names`` empty); every metric or classifier
    that needs labels is refused before any training starts."""


NO_LABELS = "none"

# Registry of label kinds: single-label digits (PolyMNIST), multi-label attributes/findings
# (CelebA, CUB colours, MIMIC-CXR), and none (CUB built from the release, which has no attribute
# file). Readers look the kind up here instead of branching on its name; an unlabelled sample
# stores an empty multi-hot vector, so it reads and batches like any other.
LABEL_KINDS: dict[str, LabelKind] = {
    "single": LabelKind("single", stored_dtype="int64", stored_ndim=0),
    "multi": LabelKind("multi", stored_dtype="uint8", stored_ndim=1),
    NO_LABELS: LabelKind(NO_LABELS, stored_dtype="uint8", stored_ndim=1, has_labels=False),
}


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or inconsistent; the message names file and field."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    """File name inside the split directory, e.g. ``shard-000000.tar``."""
    num_samples: int
    size: int
    """Bytes on disk; checked whenever a reader opens the split (cheap, catches truncation)."""
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "num_samples": self.num_samples, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    dataset: str
    version: str
    split: str
    modalities: tuple[ModalitySpec, ...]
    label_kind: str
    label_names: tuple[str, ...]
    num_samples: int
    samples_per_shard: int
    shards: tuple[ShardInfo, ...]
    dropped_samples: int = 0
    """Source samples left out so that every shard holds exactly ``samples_per_shard``."""
    builder: dict[str, Any] = field(default_factory=dict)
    """The parameters the builder ran with; a rebuild with equal parameters is a no-op."""
    source: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    restricted: bool = False
    """Credentialed data (MIMIC-CXR): no sample of it (image, decoded text, per-sample value) may
    reach Aim or the logs unless the user sets ``tracking.log_restricted_samples``."""
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)
    """Where this manifest was loaded from (not serialized)."""

    @property
    def split_dir(self) -> Path:
        if self.path is None:
            raise ValueError("manifest was not loaded from disk; it has no split directory")
        return self.path.parent

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.modalities)

    def modality(self, name: str) -> ModalitySpec:
        for spec in self.modalities:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown modality {name!r}; the manifest has {list(self.modality_names)}")

    def shard_path(self, shard: ShardInfo) -> Path:
        return self.split_dir / shard.name

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "version": self.version,
            "split": self.split,
            "modalities": [spec.to_json() for spec in self.modalities],
            "label_kind": self.label_kind,
            "label_names": list(self.label_names),
            "num_samples": self.num_samples,
            "samples_per_shard": self.samples_per_shard,
            "dropped_samples": self.dropped_samples,
            "shards": [shard.to_json() for shard in self.shards],
            "builder": self.builder,
            "source": self.source,
            "seed": self.seed,
            "restricted": self.restricted,
        }

    def validate(self, path: Path) -> None:
        """Raise ManifestError (naming ``path`` and the field) unless this would load back."""
        _validate(self.to_json(), path)

    def write(self, split_dir: Path) -> Path:
        """Write ``manifest.json`` (validated first, so a bad manifest is never written)."""
        path = Path(split_dir) / MANIFEST_NAME
        self.validate(path)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path


def load_manifest(split_dir: str | Path) -> Manifest:
    """Read and validate ``split_dir/manifest.json``; raises ManifestError naming file and field."""
    path = Path(split_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (is {split_dir} a built split directory?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON: {exc}") from exc
    return _validate(data, path)


def _validate(data: Any, path: Path) -> Manifest:
    check = _Checker(path)
    check.that(isinstance(data, dict), "<top level>", "must be a JSON object")
    # An unknown key is a misspelt one (by hand or a flipped byte): its field would silently take
    # its default, e.g. a restricted dataset read as public.
    check.known_fields(data, _TOP_FIELDS)
    version = check.field(data, "format_version", int)
    check.that(version == FORMAT_VERSION, "format_version",
               f"is {version}, this reader understands {FORMAT_VERSION} (rebuild the dataset)")
    modalities_json = check.field(data, "modalities", list)
    check.that(len(modalities_json) > 0, "modalities", "is empty")
    modalities = tuple(_modality(check, item, f"modalities[{i}]") for i, item in enumerate(modalities_json))
    names = [spec.name for spec in modalities]
    check.that(len(set(names)) == len(names), "modalities", f"has duplicate names {names}")

    label_kind = check.field(data, "label_kind", str)
    check.that(label_kind in LABEL_KINDS, "label_kind", f"is {label_kind!r}, expected one of {list(LABEL_KINDS)}")
    label_names = check.field(data, "label_names", list)
    check.that(all(isinstance(n, str) for n in label_names), "label_names", "must be a list of strings")
    check.that(len(set(label_names)) == len(label_names), "label_names", f"has duplicate names {label_names}")
    if LABEL_KINDS[label_kind].has_labels:
        check.that(len(label_names) > 0, "label_names", f"is empty, but label_kind {label_kind!r} needs labels")
    else:
        check.that(not label_names, "label_names", f"must be empty for label_kind {label_kind!r}")

    samples_per_shard = check.field(data, "samples_per_shard", int)
    check.that(samples_per_shard > 0, "samples_per_shard", f"is {samples_per_shard}, must be positive")
    shards_json = check.field(data, "shards", list)
    check.that(len(shards_json) > 0, "shards", "is empty")
    shards = tuple(_shard(check, item, f"shards[{i}]") for i, item in enumerate(shards_json))
    for i, shard in enumerate(shards):
        check.that(shard.num_samples == samples_per_shard, f"shards[{i}].num_samples",
                   f"is {shard.num_samples} for {shard.name}, every shard must hold samples_per_shard="
                   f"{samples_per_shard}")
    shard_names = [s.name for s in shards]
    check.that(len(set(shard_names)) == len(shard_names), "shards", "lists a shard twice")
    num_samples = check.field(data, "num_samples", int)
    check.that(num_samples == samples_per_shard * len(shards), "num_samples",
               f"is {num_samples}, but {len(shards)} shards x {samples_per_shard} = "
               f"{samples_per_shard * len(shards)}")
    dropped = data.get("dropped_samples", 0)
    check.that(isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0, "dropped_samples",
               "must be a non-negative integer")
    seed = data.get("seed")
    check.that(seed is None or (isinstance(seed, int) and not isinstance(seed, bool)), "seed",
               "must be an integer or null")
    builder = data.get("builder", {})
    source = data.get("source", {})
    check.that(isinstance(builder, dict), "builder", "must be an object")
    check.that(isinstance(source, dict), "source", "must be an object")
    # Absent in manifests written before the field existed: those datasets are all public.
    restricted = data.get("restricted", False)
    check.that(isinstance(restricted, bool), "restricted", "must be true or false")
    return Manifest(
        dataset=check.field(data, "dataset", str),
        version=check.field(data, "version", str),
        split=check.field(data, "split", str),
        modalities=modalities,
        label_kind=label_kind,
        label_names=tuple(label_names),
        num_samples=num_samples,
        samples_per_shard=samples_per_shard,
        shards=shards,
        dropped_samples=dropped,
        builder=builder,
        source=source,
        seed=seed,
        restricted=restricted,
        format_version=version,
        path=path,
    )


def _modality(check: "_Checker", item: Any, where: str) -> ModalitySpec:
    check.that(isinstance(item, dict), where, "must be an object")
    check.known_fields(item, _MODALITY_FIELDS, where)
    name = check.field(item, "name", str, where)
    check.that(re.fullmatch(r"[A-Za-z0-9_]+", name) is not None, f"{where}.name",
               f"is {name!r}; member names may only use letters, digits and '_' (no dots)")
    kind = check.field(item, "kind", str, where)
    check.that(kind in _MODALITY_KINDS, f"{where}.kind", f"is {kind!r}, expected one of {list(_MODALITY_KINDS)}")
    shape = check.field(item, "shape", list, where)
    check.that(len(shape) > 0 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape),
               f"{where}.shape", f"is {shape}, must be a non-empty list of positive integers")
    dtype = check.field(item, "dtype", str, where)
    try:
        dtype_kind = np.dtype(dtype).kind
    except Exception:  # numpy raises TypeError, and SyntaxError for some strings
        check.fail(f"{where}.dtype", f"is {dtype!r}, not a numpy dtype name")
    check.that(dtype_kind in _NUMERIC_DTYPE_KINDS, f"{where}.dtype",
               f"is {dtype!r}, expected a numeric numpy dtype (bool, integer or float)")
    likelihood = check.field(item, "likelihood", str, where)
    check.that(likelihood in _LIKELIHOODS, f"{where}.likelihood",
               f"is {likelihood!r}, expected one of {list(_LIKELIHOODS)}")
    vocabulary = item.get("vocabulary", [])
    check.that(isinstance(vocabulary, list) and all(isinstance(token, str) for token in vocabulary),
               f"{where}.vocabulary", "must be a list of strings")
    return ModalitySpec.from_json(item)


def _shard(check: "_Checker", item: Any, where: str) -> ShardInfo:
    check.that(isinstance(item, dict), where, "must be an object")
    check.known_fields(item, _SHARD_FIELDS, where)
    name = check.field(item, "name", str, where)
    check.that(_SHARD_NAME.match(name) is not None, f"{where}.name",
               f"is {name!r}, expected a plain file name ending in .tar")
    num_samples = check.field(item, "num_samples", int, where)
    size = check.field(item, "size", int, where)
    check.that(size > 0, f"{where}.size", f"is {size}, must be positive")
    sha256 = check.field(item, "sha256", str, where)
    check.that(_SHA256.match(sha256) is not None, f"{where}.sha256", f"is {sha256!r}, not a hex sha256")
    return ShardInfo(name=name, num_samples=num_samples, size=size, sha256=sha256)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str):
        raise ManifestError(f"{self.path}: field {where!r} {problem}")

    def that(self, condition: bool, where: str, problem: str) -> None:
        if not condition:
            self.fail(where, problem)

    def known_fields(self, data: dict, known: tuple[str, ...], parent: str | None = None) -> None:
        for name in data:
            if name not in known:
                where = f"{parent}.{name}" if parent else name
                self.fail(where, f"is not a field of {'the manifest' if parent is None else parent} "
                                 f"(misspelt?); its fields: {', '.join(known)}")

    def field(self, data: dict, name: str, kind: type, parent: str | None = None):
        where = f"{parent}.{name}" if parent else name
        if name not in data:
            self.fail(where, "is missing")
        value = data[name]
        # bool is an int subclass in Python; a JSON true is never a valid count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(where, f"is {value!r}, expected {kind.__name__}")
        return value
