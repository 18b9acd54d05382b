"""Writing one split as equal-sized tar shards plus ``manifest.json``, atomically and reproducibly.

Every builder hands its samples to ``write_split``; this is the only code that lays out shards.

- Layout: ``shard-000000.tar ...``; one sample per key; one ``<modality>.npy`` member per
  modality (the array exactly as the ModalitySpec says) and ``labels.npy``.
- Reproducible bytes: members carry a fixed mtime/uid/gid/user/group/mode in ustar format and
  ``.npy`` bytes depend only on the array, so equal samples give shards with equal sha256.
- Equal counts: ``plan_shards`` picks the shard count first and then the largest equal size,
  so at most ``num_shards - 1`` trailing samples are dropped (recorded as ``dropped_samples``).
- Atomic: everything is written into a hidden temp directory next to the target, the
  manifest last, all fsynced, then renamed into place. A crash leaves at worst a stale
  ``.<split>.partial-*`` directory (removed by the next build), never a manifest that points
  at half-written shards.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from data_pipelines.manifest import (
    LABEL_KINDS,
    LABELS_MEMBER,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardInfo,
    load_manifest,
)
from data_pipelines.modality import ModalitySpec

SHARD_PATTERN = "shard-{:06d}.tar"
KEY_PATTERN = "{:08d}"
"""Sample keys are the sample's index in the split; never dots (webdataset splits names at the first dot)."""

# Fixed tar member metadata: with these the tar bytes depend only on the samples.
_TAR_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header to every member
_TAR_USER = "mmplatform"
_TAR_MODE = 0o444


@dataclass(frozen=True)
class SplitHeader:
    """Everything in the manifest except what writing the shards determines."""

    dataset: str
    version: str
    split: str
    modalities: tuple[ModalitySpec, ...]
    label_kind: str
    label_names: tuple[str, ...]
    builder: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    restricted: bool = False
    """Credentialed data: see ``Manifest.restricted``."""

    def identity(self) -> dict[str, Any]:
        """What decides whether an existing build can be reused (compared after a JSON round trip)."""
        return json.loads(json.dumps({
            "dataset": self.dataset,
            "version": self.version,
            "split": self.split,
            "modalities": [spec.to_json() for spec in self.modalities],
            "label_kind": self.label_kind,
            "label_names": list(self.label_names),
            "builder": self.builder,
            "source": self.source,
            "seed": self.seed,
            "restricted": self.restricted,
        }))


@dataclass(frozen=True)
class Sample:
    arrays: Mapping[str, np.ndarray]
    """One array per modality name, exactly as stored (e.g. uint8 CHW images)."""
    label: np.ndarray | int


@dataclass(frozen=True)
class ShardPlan:
    num_shards: int
    samples_per_shard: int
    dropped_samples: int

    @property
    def num_samples(self) -> int:
        return self.num_shards * self.samples_per_shard


def plan_shards(count: int, max_samples_per_shard: int) -> ShardPlan:
    """Equal shards of at most ``max_samples_per_shard``, dropping fewer samples than shards.

    Ragged last shards are not allowed (equal counts keep the per-worker step arithmetic of
    the readers exact). Taking ``ceil(count / max)`` shards and then the largest equal size
    loses at most ``num_shards - 1`` samples, and none when the maximum divides the count.
    """
    if count <= 0:
        raise ValueError(f"cannot shard {count} samples")
    if max_samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {max_samples_per_shard}")
    num_shards = -(-count // max_samples_per_shard)
    per_shard = count // num_shards
    return ShardPlan(num_shards, per_shard, count - num_shards * per_shard)


def encode_npy(array: np.ndarray) -> bytes:
    """``np.save`` bytes; the header depends only on shape and dtype, so it is built once."""
    array = np.asarray(array)  # not ascontiguousarray: it turns 0-d labels into shape (1,)
    return npy_header(array.shape, array.dtype.str) + array.tobytes(order="C")


@functools.lru_cache(maxsize=256)
def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The header ``np.save`` writes for this shape and dtype (C order).

    Built from the shape alone, never by saving an array of it: readers build it from a manifest,
    whose shape may be damaged into terabytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape),
    })
    return buffer.getvalue()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_split(
    split_dir: str | Path,
    header: SplitHeader,
    samples: Iterable[Sample],
    count: int,
    max_samples_per_shard: int,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write the first ``plan_shards(count, ...).num_samples`` of ``count`` samples as a split.

    The samples are checked against the modality specs and label kind while writing, so a
    builder bug fails here, naming the sample, and not later in a training job.
    """
    split_dir = Path(split_dir)
    plan = plan_shards(count, max_samples_per_shard)

    def manifest_with(shards) -> Manifest:
        return Manifest(
            dataset=header.dataset,
            version=header.version,
            split=header.split,
            modalities=header.modalities,
            label_kind=header.label_kind,
            label_names=header.label_names,
            num_samples=plan.num_samples,
            samples_per_shard=plan.samples_per_shard,
            shards=tuple(shards),
            dropped_samples=plan.dropped_samples,
            builder=header.builder,
            source=header.source,
            seed=header.seed,
            restricted=header.restricted,
        )

    # Fail on a bad header (duplicate modality names, unknown label kind...) before writing.
    placeholders = [ShardInfo(SHARD_PATTERN.format(i), plan.samples_per_shard, 1, "0" * 64)
                    for i in range(plan.num_shards)]
    manifest_with(placeholders).validate(split_dir / MANIFEST_NAME)
    split_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(split_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{split_dir.name}.partial-", dir=split_dir.parent))
    # mkdtemp makes 0700 directories; shards on a shared volume must be readable by every worker.
    os.chmod(staging, 0o755)
    try:
        manifest = manifest_with(_write_shards(staging, header, iter(samples), plan, progress))
        manifest_path = manifest.write(staging)
        _fsync_path(manifest_path)
        _fsync_path(staging)
        _replace_directory(staging, split_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_manifest(split_dir)


def existing_build_matches(split_dir: str | Path, header: SplitHeader) -> bool:
    """True when ``split_dir`` holds a complete build of exactly ``header``'s parameters.

    Complete means: valid manifest, same identity, every shard present with the recorded size
    and sha256 (hashing a split is seconds even for full PolyMNIST, and it is what makes
    "up to date" trustworthy).
    """
    try:
        manifest = load_manifest(split_dir)
    except ManifestError:
        return False
    stored = SplitHeader(
        dataset=manifest.dataset, version=manifest.version, split=manifest.split,
        modalities=manifest.modalities, label_kind=manifest.label_kind,
        label_names=manifest.label_names, builder=manifest.builder, source=manifest.source,
        seed=manifest.seed, restricted=manifest.restricted,
    )
    if stored.identity() != header.identity():
        return False
    for shard in manifest.shards:
        path = manifest.shard_path(shard)
        if not path.is_file() or path.stat().st_size != shard.size or sha256_file(path) != shard.sha256:
            return False
    return True


def up_to_date_manifest(split_dir: Path, header: SplitHeader, log) -> Manifest | None:
    """The manifest of an intact build of exactly ``header`` at ``split_dir``, reported through
    ``log`` as up to date; None when the split has to be (re)built."""
    if not existing_build_matches(split_dir, header):
        return None
    manifest = load_manifest(split_dir)
    log(f"{Path(split_dir).name}: up to date, {manifest.num_samples} samples in {len(manifest.shards)} shards "
        f"at {split_dir}")
    return manifest


def _write_shards(staging: Path, header: SplitHeader, samples, plan: ShardPlan, progress) -> list[ShardInfo]:
    label_kind = LABEL_KINDS[header.label_kind]
    shards = []
    index = 0
    for shard_index in range(plan.num_shards):
        name = SHARD_PATTERN.format(shard_index)
        path = staging / name
        with open(path, "wb") as stream:
            writer = wds.TarWriter(
                stream, encoder=False, mtime=_TAR_MTIME, user=_TAR_USER, group=_TAR_USER,
                mode=_TAR_MODE, format="USTAR_FORMAT",
            )
            try:
                for _ in range(plan.samples_per_shard):
                    try:
                        sample = next(samples)
                    except StopIteration:
                        raise ValueError(
                            f"the builder yielded only {index} samples, {plan.num_samples} were announced"
                        ) from None
                    writer.write(_encode_sample(index, sample, header, label_kind))
                    index += 1
                    if progress is not None:
                        progress(1)
            finally:
                # Also on failure: an unclosed tar stream would try to write at garbage collection.
                writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        shards.append(ShardInfo(name=name, num_samples=plan.samples_per_shard,
                                size=path.stat().st_size, sha256=sha256_file(path)))
    return shards


def _encode_sample(index: int, sample: Sample, header: SplitHeader, label_kind) -> dict[str, Any]:
    record: dict[str, Any] = {"__key__": KEY_PATTERN.format(index)}
    expected = {spec.name for spec in header.modalities}
    if set(sample.arrays) != expected:
        raise ValueError(f"sample {index}: modalities {sorted(sample.arrays)}, expected {sorted(expected)}")
    for spec in header.modalities:
        array = np.asarray(sample.arrays[spec.name])
        if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
            raise ValueError(
                f"sample {index} member {spec.name}.npy: {array.dtype}{list(array.shape)}, the modality "
                f"spec says {spec.dtype}{list(spec.shape)}"
            )
        record[f"{spec.name}.npy"] = encode_npy(array)
    label = np.asarray(sample.label, dtype=label_kind.stored_dtype)
    if label.ndim != label_kind.stored_ndim:
        raise ValueError(f"sample {index} {LABELS_MEMBER}: {label.ndim}-d, a {label_kind.name} label is "
                         f"{label_kind.stored_ndim}-d")
    record[LABELS_MEMBER] = encode_npy(label)
    return record


def _replace_directory(staging: Path, target: Path) -> None:
    # A directory cannot be renamed over a non-empty one, so the old build is moved aside
    # first; between the two renames the target is briefly absent, never half-written.
    retired = None
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, retired / target.name)
    os.rename(staging, target)
    _fsync_path(target.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _remove_stale_temporaries(target: Path) -> None:
    """Leftovers of an interrupted build of this split (one builder per output dir is assumed)."""
    for prefix in (f".{target.name}.partial-", f".{target.name}.old-"):
        for stale in target.parent.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
