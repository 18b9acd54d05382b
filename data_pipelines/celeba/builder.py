"""Bimodal CelebA (image + attribute text) -> shards, from the official files.

``build_celeba(source, out)`` writes ``out/train`` and ``out/test`` (shards + manifest.json).
As published (MoPoE, mmvmvae), "train" is partition 0 and "test" is partition 1, the official
*validation* split; both are parameters. Each sample holds:

- ``image.npy``: uint8 ``[3, 64, 64]`` (``image.py``: centre crop 148, bicubic 64);
- ``text.npy``: uint8 ``[256]`` MoPoE alphabet ids of the attribute sentence (``text.py``);
- ``labels.npy``: the 40 attributes multi-hot (1 where the file says 1), names in the manifest.

Order and reproducibility: samples are written in ``list_attr_celeba.txt`` order. Images are
decoded in worker processes (``workers``) by an ordered map, so the shard bytes do not depend
on the number of workers; the text offsets are seeded per image name. Same inputs, same
parameters, same Pillow -> the same shard bytes.

Up to date: the identity of a split (builder parameters, seed, Pillow version, sha256 of both
annotation files, and a fingerprint of the image files used: names and byte sizes) is stored
in its manifest; an intact build with the same identity is left alone, ``force`` rebuilds.
Image contents are not hashed for the identity: that would read 1.4 GB before every no-op,
while a replaced or truncated JPEG practically always changes its size.

Failure: both annotation files and the existence of every image are checked before anything
is written; a bad image (wrong size, undecodable) stops the build of its split, and
``write_split`` leaves no partial split behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from data_pipelines.celeba import image as celeba_image
from data_pipelines.celeba.source import (
    ATTRIBUTES_FILE,
    PARTITIONS,
    PARTITIONS_FILE,
    CelebAError,
    CelebASource,
    read_source,
)
from data_pipelines.celeba.text import ALPHABET, SEQUENCE_LENGTH, TEXT_OFFSETS, AttributeTextEncoder
from data_pipelines.manifest import Manifest
from data_pipelines.parallel import decoded_in_order
from data_pipelines.split_writer import resolved_progress_and_workers, write_splits
from data_pipelines.modality import ModalitySpec
from data_pipelines.shards import Sample, SplitHeader, sha256_file

DATASET = "celeba"
VERSION = "1.0"
SPLITS = ("train", "test")
DEFAULT_SAMPLES_PER_SHARD = 500
"""Upper bound (see shards.plan_shards): ~7 MB shards, 326 train / 40 test for full CelebA."""
IMAGES_PER_TASK = 32
"""Images per worker task: a few tens of milliseconds of decoding against one pickling round trip."""


def modality_specs() -> tuple[ModalitySpec, ...]:
    return (
        ModalitySpec(name="image", kind="image", shape=celeba_image.IMAGE_SHAPE, dtype="uint8",
                     likelihood="laplace"),
        ModalitySpec(name="text", kind="text", shape=(SEQUENCE_LENGTH,), dtype="uint8",
                     likelihood="categorical", vocabulary=ALPHABET),
    )


@dataclass(frozen=True)
class _PlannedSplit:
    name: str
    header: SplitHeader
    indices: np.ndarray
    """Rows of the source, in file order."""

    @property
    def count(self) -> int:
        return len(self.indices)


def build_celeba(
    source: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    text_offset: str = "random",
    train_partitions: Sequence[int] = (0,),
    test_partitions: Sequence[int] = (1,),
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    limit: int | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Manifest]:
    """Build (or confirm up to date) ``out/train`` and ``out/test`` from the CelebA folder ``source``.

    ``seed`` draws the text offsets (``text_offset="random"``, as published; ``"none"`` starts
    every text at 0 and records no seed). ``limit`` keeps the first N images of each split in
    file order. ``workers`` decoding processes default to min(4, CPUs); 1 decodes in this
    process. ``progress`` (a tqdm bar on stderr) defaults to whether stderr is a terminal.
    Raises CelebAError (a ValueError) for bad input, ValueError for bad arguments.
    """
    _check_arguments(seed, text_offset, train_partitions, test_partitions, samples_per_shard, limit, workers)
    # Plain ints from here on: they go into the manifest's JSON (numpy integers would not).
    seed, samples_per_shard = int(seed), int(samples_per_shard)
    limit = None if limit is None else int(limit)
    partitions_of = {"train": sorted({int(p) for p in train_partitions}),
                     "test": sorted({int(p) for p in test_partitions})}
    progress, workers = resolved_progress_and_workers(progress, workers)
    out = Path(out).expanduser()
    celeba = read_source(source)
    try:
        encoder = AttributeTextEncoder(celeba.attribute_names, text_offset, seed)
    except ValueError as exc:
        raise CelebAError(f"{celeba.attributes_path}:2: {exc}") from None
    planned = _plan(celeba, seed, text_offset, partitions_of, samples_per_shard, limit)

    def samples_of(split: _PlannedSplit, written: int, pool) -> Iterator[Sample]:
        indices = split.indices[:written]  # one sample per image
        return _samples(celeba, indices, _decoded_images(celeba, indices, pool, workers), encoder)

    return write_splits(out, planned, samples_per_shard, samples_of, force=force, workers=workers, progress=progress,
                        log=log)


def _check_arguments(seed, text_offset, train_partitions, test_partitions, samples_per_shard, limit, workers):
    def positive_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if text_offset not in TEXT_OFFSETS:
        raise ValueError(f"text_offset is {text_offset!r}, expected one of {list(TEXT_OFFSETS)}")
    for name, partitions in (("train_partitions", train_partitions), ("test_partitions", test_partitions)):
        values = list(partitions) if isinstance(partitions, Iterable) and not isinstance(partitions, str) else []
        if not values or any(isinstance(p, bool) or p not in PARTITIONS for p in values):
            raise ValueError(f"{name} is {partitions!r}, expected a non-empty subset of {sorted(PARTITIONS)} "
                             f"({', '.join(f'{k} {v}' for k, v in PARTITIONS.items())})")
    shared = sorted(set(train_partitions) & set(test_partitions))
    if shared:
        raise ValueError(f"partition {shared[0]} is in both train_partitions and test_partitions")
    if not positive_int(samples_per_shard):
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    if limit is not None and not positive_int(limit):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if workers is not None and not positive_int(workers):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


def _plan(celeba: CelebASource, seed: int, text_offset: str, partitions_of: dict[str, list[int]],
          samples_per_shard: int, limit: int | None) -> list[_PlannedSplit]:
    """Select each split's images and describe the build; checks every image exists first."""
    annotation_files = {name: {"sha256": sha256_file(celeba.root / name), "size": (celeba.root / name).stat().st_size}
                        for name in (ATTRIBUTES_FILE, PARTITIONS_FILE)}
    selections = {split: celeba.select(partitions_of[split], limit) for split in SPLITS}
    for split, indices in selections.items():
        if len(indices) == 0:
            raise CelebAError(f"{celeba.partitions_path}: no image has partition "
                              f"{' or '.join(map(str, partitions_of[split]))} (the {split} split)")
    planned = []
    for split, indices in selections.items():
        sizes = celeba.image_sizes(indices)  # raises on the first missing image, before any writing
        builder: dict[str, Any] = {
            "partitions": partitions_of[split],
            "limit": limit,
            "samples_per_shard": samples_per_shard,
            "image": {"crop_box": list(celeba_image.CROP_BOX), "size": celeba_image.IMAGE_SIZE,
                      "resample": "bicubic", "pillow": PIL.__version__},
            "text": {"recipe": "mmjsd_attribute_text", "alphabet": "mopoe", "length": SEQUENCE_LENGTH,
                     "offset": text_offset},
        }
        source: dict[str, Any] = {
            "kind": "official_files",
            "path": str(celeba.root.resolve()),
            "annotations": annotation_files,
            "images": {"count": int(len(indices)), "names_and_sizes_sha256": _listing_digest(celeba, indices, sizes)},
        }
        header = SplitHeader(DATASET, VERSION, split, modality_specs(), "multi", celeba.attribute_names,
                             builder=builder, source=source, seed=seed if text_offset == "random" else None)
        planned.append(_PlannedSplit(split, header, indices))
    return planned


def _listing_digest(celeba: CelebASource, indices: np.ndarray, sizes: np.ndarray) -> str:
    digest = hashlib.sha256()
    for index, size in zip(indices.tolist(), sizes.tolist()):
        digest.update(f"{celeba.image_names[index]}\t{size}\n".encode())
    return digest.hexdigest()


def _decoded_images(celeba: CelebASource, indices: np.ndarray, pool: ProcessPoolExecutor | None,
                    workers: int) -> Iterator[np.ndarray]:
    tasks = [(str(celeba.image_path(i)), celeba.listed_at(i)) for i in indices.tolist()]
    return decoded_in_order(celeba_image.load_images, tasks, IMAGES_PER_TASK, pool, workers)


def _samples(celeba: CelebASource, indices: np.ndarray, images: Iterator[np.ndarray],
             encoder: AttributeTextEncoder) -> Iterator[Sample]:
    with closing(images):
        for index, image in zip(indices.tolist(), images):
            present = celeba.attributes[index]
            yield Sample(
                arrays={"image": image, "text": encoder.encode(celeba.image_names[index], present)},
                label=present.astype(np.uint8),
            )
