"""CUB image-captions -> shards, from either official form (``source.py``).

``build_cub(source, out)`` writes ``out/train`` and ``out/test`` (shards + manifest.json). One
sample per (image, caption) pair, in the published item order (image ``k // 10``, caption
``k % 10``), each holding:

- ``image.npy``: uint8 ``[3, 64, 64]`` (``image.py``: bilinear resize of the whole image);
- ``text.npy``: uint16 ``[32]`` word ids (``text.py``); the vocabulary (words counted more than 3
  times in the train split's captions) is the text modality's ``vocabulary`` in the manifest;
- ``labels.npy``: the 6 colour groups multi-hot (``source.COLOUR_GROUPS``) when the source has an
  attribute file (CUB_200_2011 form with ``attributes/image_attribute_labels.txt`` or MMVM's
  ``labels.txt``). Without one (always for the release) the dataset has no labels: the manifest's
  ``label_kind`` is ``none``, ``label_names`` is empty and every ``labels.npy`` an empty vector,
  so metrics and classifiers that need labels are refused before a training starts.

The vocabulary always comes from the whole train split (also with ``limit``), so a limited build
has the ids of the full one. Same captions and images -> the same samples, whichever form they
come from: the shards of the two forms are then byte-identical (the manifests differ in ``source``).

Order and reproducibility: images are decoded once each (not once per caption) in worker
processes by an ordered map, so the shard bytes do not depend on the number of workers. Same
inputs, same parameters, same Pillow -> the same shard bytes.

Up to date: a split's identity (parameters, vocabulary, Pillow version, sha256 of the annotation
files and of all captions, names and byte sizes of the images used) is in its manifest; an intact
build with the same identity is left alone, ``force`` rebuilds. Image contents are not hashed.

Failure: every caption, list and label file and the existence of every image are checked
before anything is written; a bad image stops the build of its split, and ``write_split``
leaves no partial split behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from data_pipelines.cub import image as cub_image
from data_pipelines.cub.source import CAPTIONS_PER_IMAGE, GROUP_NAMES, SPLITS, CUBSource, merge_colours, \
    read_source
from data_pipelines.cub.text import MIN_COUNT, SEQUENCE_LENGTH, TEXT_DTYPE, build_vocabulary, encode_tokens, \
    word_tokenize
from data_pipelines.manifest import NO_LABELS, Manifest
from data_pipelines.parallel import decoded_in_order
from data_pipelines.split_writer import resolved_progress_and_workers, write_splits
from data_pipelines.modality import ModalitySpec
from data_pipelines.shards import Sample, SplitHeader
from data_pipelines.words import TOKENIZER

DATASET = "cub"
VERSION = "1.0"
DEFAULT_SAMPLES_PER_SHARD = 1000
"""Upper bound (see shards.plan_shards): ~12 MB shards; 89 train / 30 test shards for full CUB."""
IMAGES_PER_TASK = 16
"""Images per worker task: CUB photos (about 500x375) take a few milliseconds each to decode."""


def modality_specs(vocabulary: tuple[str, ...]) -> tuple[ModalitySpec, ...]:
    return (
        ModalitySpec(name="image", kind="image", shape=cub_image.IMAGE_SHAPE, dtype="uint8", likelihood="laplace"),
        ModalitySpec(name="text", kind="text", shape=(SEQUENCE_LENGTH,), dtype=TEXT_DTYPE,
                     likelihood="categorical", vocabulary=vocabulary),
    )


@dataclass(frozen=True)
class _PlannedSplit:
    name: str
    header: SplitHeader
    images: np.ndarray
    """Image positions in the split, item order."""
    texts: np.ndarray
    """uint16 ``[len(images), 10, 32]``: the encoded captions of those images."""
    labels: np.ndarray
    """uint8 ``[len(images), len(label_names)]``."""

    @property
    def count(self) -> int:
        return len(self.images) * CAPTIONS_PER_IMAGE


def build_cub(
    source: str | Path,
    out: str | Path,
    *,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    limit: int | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Manifest]:
    """Build (or confirm up to date) ``out/train`` and ``out/test`` from a CUB source of either form.

    ``limit`` keeps the first N images of each split (10 samples each). ``workers`` decoding
    processes default to min(4, CPUs); 1 decodes in this process. ``progress`` (a tqdm bar on
    stderr) defaults to whether stderr is a terminal. Raises CUBError (a ValueError) for bad
    input, ValueError for bad arguments.
    """
    _check_arguments(samples_per_shard, limit, workers)
    samples_per_shard = int(samples_per_shard)
    limit = None if limit is None else int(limit)
    progress, workers = resolved_progress_and_workers(progress, workers)
    out = Path(out).expanduser()
    cub = read_source(source)
    planned = _plan(cub, samples_per_shard, limit)

    def samples_of(split: _PlannedSplit, written: int, pool) -> Iterator[Sample]:
        needed = split.images[: -(-written // CAPTIONS_PER_IMAGE)]  # each image gives 10 samples
        return _samples(split, _decoded_images(cub, split.name, needed, pool, workers))

    return write_splits(out, planned, samples_per_shard, samples_of, force=force, workers=workers, progress=progress,
                        log=log)


def _check_arguments(samples_per_shard, limit, workers) -> None:
    def positive_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

    if not positive_int(samples_per_shard):
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    if limit is not None and not positive_int(limit):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if workers is not None and not positive_int(workers):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


def _plan(cub: CUBSource, samples_per_shard: int, limit: int | None) -> list[_PlannedSplit]:
    """Vocabulary, encoded captions, labels and identity of each split; checks every image exists first."""
    tokens = {split: [[word_tokenize(caption) for caption in captions] for captions in cub.splits[split].captions]
              for split in SPLITS}
    vocabulary = build_vocabulary(words for image in tokens["train"] for words in image)
    id_of = {word: i for i, word in enumerate(vocabulary)}
    specs = modality_specs(vocabulary)
    annotations = cub.annotation_digests()
    captions_digest = hashlib.sha256()
    for split in SPLITS:
        for name, captions in zip(cub.splits[split].image_names, cub.splits[split].captions):
            captions_digest.update("\0".join((split, name, *captions, "")).encode())
    label_kind, label_names = ("multi", GROUP_NAMES) if cub.has_labels else (NO_LABELS, ())

    selections = {split: np.arange(len(cub.splits[split]))[:limit] for split in SPLITS}
    sizes = {split: cub.image_sizes(split, indices) for split, indices in selections.items()}  # before any writing
    planned = []
    for split, indices in selections.items():
        part = cub.splits[split]
        texts = np.stack([np.stack([encode_tokens(words, id_of) for words in tokens[split][i]])
                          for i in indices.tolist()])
        if cub.has_labels:
            labels = merge_colours(part.colours[indices])
        else:
            labels = np.zeros((len(indices), 0), dtype=np.uint8)
        builder: dict[str, Any] = {
            "limit": limit,
            "samples_per_shard": samples_per_shard,
            "captions_per_image": CAPTIONS_PER_IMAGE,
            "image": {"size": cub_image.IMAGE_SIZE, "resample": "bilinear", "crop": None, "pillow": PIL.__version__},
            "text": {"tokenizer": TOKENIZER, "lowercase": False, "min_count": MIN_COUNT, "length": SEQUENCE_LENGTH,
                     "vocabulary_from": "train"},
            "labels": ({"kind": "colour_groups", "file": cub.label_file, "attributes": "has_primary_color (249-263)"}
                       if cub.has_labels else {"kind": "none"}),
        }
        listing = hashlib.sha256()
        for index, size in zip(indices.tolist(), sizes[split].tolist()):
            listing.update(f"{part.image_names[index]}\t{size}\n".encode())
        source: dict[str, Any] = {
            "kind": cub.form,
            "path": str(cub.path.resolve()),
            "annotations": annotations,
            "captions_sha256": captions_digest.hexdigest(),
            "images": {"count": int(len(indices)), "names_and_sizes_sha256": listing.hexdigest()},
        }
        header = SplitHeader(DATASET, VERSION, split, specs, label_kind, label_names, builder=builder, source=source)
        planned.append(_PlannedSplit(split, header, indices, texts, labels))
    return planned


def _decoded_images(cub: CUBSource, split: str, indices: np.ndarray, pool: ProcessPoolExecutor | None,
                    workers: int) -> Iterator[np.ndarray]:
    archive = None if cub.archive is None else str(cub.archive)
    tasks = [(cub.image_member(split, i), cub.splits[split].listed_at[i], archive) for i in indices.tolist()]
    return decoded_in_order(cub_image.load_images, tasks, IMAGES_PER_TASK, pool, workers)


def _samples(split: _PlannedSplit, images: Iterator[np.ndarray]) -> Iterator[Sample]:
    with closing(images):
        for position, image in enumerate(images):
            label = split.labels[position]
            for caption in range(CAPTIONS_PER_IMAGE):
                yield Sample(arrays={"image": image, "text": split.texts[position, caption]}, label=label)
