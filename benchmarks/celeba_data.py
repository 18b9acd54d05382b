"""CelebA data path: shard build rate, and the training reader against a JPEG-folder loader.

(a) Build: a CelebA fixture of ``--images`` JPEGs in the official layout is generated (timed
    apart), then ``build_celeba`` turns it into shards with ``--build-workers`` decoding
    processes; reported as images written per second (train + test).
(b) Reading: the training reader (``TrainReader`` + ``make_loader``, shuffled, resampled) on
    the train split against the naive path: a map-style torch Dataset over the same train
    images that, per item, opens the JPEG, crops and resizes it and builds the text ids
    (with this package's own ``load_image`` and ``AttributeTextEncoder``: PIL directly, which
    is faster than MoPoE's ToTensor/ToPILImage/Resize chain, so the baseline is a strong one),
    in a shuffling DataLoader. Same batch size, same DataLoader workers, same run; both
    produce the same tensors (float32 images, int64 text ids, float32 multi-hot labels).

    python benchmarks/celeba_data.py              # default size, about a minute on 2 cores
    python benchmarks/celeba_data.py --images 1000 --steps 10

Prints one JSON object and writes it to ``--out`` (default benchmarks/results/celeba_data.json);
the data lives in a temporary folder (under ``--work-dir`` if given), removed afterwards.
``--smoke``: 24 images, batch 4, one loader worker, 1 warm-up and 3 timed batches per loader,
the same code paths and comparison. Writes no file unless ``--out`` is given. The machine is
shared: the load average at start and end is part of the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (  # noqa: E402
    DATASET_READER_SMOKE,
    add_dataset_reader_arguments,
    emit,
    machine_facts,
    parse_with_smoke,
    samples_per_second,
    shard_reader_rate,
    shuffled_batches,
)

RESULTS = Path(__file__).resolve().parent / "results" / "celeba_data.json"


def _jpeg_folder_dataset(source: Path, partitions, seed: int):
    """The naive baseline, built here so that this script imports torch only when it runs."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from data_pipelines.celeba.image import load_image
    from data_pipelines.celeba.source import read_source
    from data_pipelines.celeba.text import AttributeTextEncoder

    class JpegFolderCelebA(Dataset):
        """Per item: decode the JPEG, crop and resize, build the text ids; annotations read once."""

        def __init__(self):
            celeba = read_source(source)
            self.indices = celeba.select(partitions)
            self.celeba = celeba
            self.encoder = AttributeTextEncoder(celeba.attribute_names, "random", seed)

        def __len__(self):
            return len(self.indices)

        def __getitem__(self, position):
            index = int(self.indices[position])
            name, present = self.celeba.image_names[index], self.celeba.attributes[index]
            image = torch.from_numpy(load_image(self.celeba.image_path(index), self.celeba.listed_at(index)))
            text = torch.from_numpy(self.encoder.encode(name, present).astype(np.int64))
            return image.to(torch.float32).div_(255.0), text, torch.from_numpy(present.astype(np.float32))

    return JpegFolderCelebA()


def _jpeg_rate(source: Path, args) -> float:
    dataset = _jpeg_folder_dataset(source, (0,), seed=0)


    return samples_per_second(shuffled_batches(dataset, args.batch_size, args.workers), args.warmup, args.steps, lambda batch: len(batch[2]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_reader_arguments(parser, images=3000, fixture="CelebA")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file written")
    args = parse_with_smoke(parser, DATASET_READER_SMOKE, argv)
    load_at_start = [round(value, 2) for value in os.getloadavg()]

    from data_pipelines.celeba import build_celeba, write_celeba_fixture

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        started = time.perf_counter()
        source = write_celeba_fixture(work / "CelebA", args.images, seed=0)
        fixture_s = time.perf_counter() - started

        started = time.perf_counter()
        manifests = build_celeba(source, work / "shards", workers=args.build_workers, progress=False,
                                 log=lambda _: None)
        build_s = time.perf_counter() - started
        built_images = sum(m.num_samples for m in manifests.values())

        shard_rate = shard_reader_rate(work / "shards" / "train", args)
        jpeg_rate = _jpeg_rate(source, args)
        train_samples = manifests["train"].num_samples

    result = {
        "benchmark": "celeba_data",
        "smoke": args.smoke,
        "build_images_per_s": round(built_images / build_s, 1),
        "build_s": round(build_s, 2),
        "shard_samples_per_s": round(shard_rate, 1),
        "jpeg_samples_per_s": round(jpeg_rate, 1),
        "speedup": round(shard_rate / jpeg_rate, 2),
        "config": {
            "dataset": "CelebA fixture in the official layout (data_pipelines.celeba.fixture), 178x218 JPEGs",
            "images": args.images, "built_images": built_images, "train_samples": train_samples,
            "build_workers": args.build_workers or min(4, os.cpu_count() or 1),
            "batch_size": args.batch_size, "loader_workers": args.workers, "timed_steps": args.steps,
            "warmup_steps": args.warmup, "fixture_s": round(fixture_s, 2),
            "baseline": "map-style Dataset: JPEG decode + crop + bicubic resize + text ids per item, "
                        "shuffling DataLoader",
        },
        "machine": {**machine_facts(), "load_average_at_start": load_at_start},
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
