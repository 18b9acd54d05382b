"""CUB data path: shard build rate, and the training reader against a JPEG-folder + tokenize loader.

(a) Build: a CUB fixture of ``--images`` JPEGs in the CUB_200_2011 layout as MMVM reads it (with
    the attribute file, so labels are built too) is generated (timed apart), then ``build_cub``
    turns it into shards with ``--build-workers`` decoding processes; reported as images decoded
    per second and as samples (image, caption pairs: 10 per image) written per second.
(b) Reading: the training reader (``TrainReader`` + ``make_loader``, shuffled, resampled) on the
    train split against the naive path: a map-style torch Dataset over the same train pairs
    that, per item, opens the JPEG of image ``k // 10``, resizes it and tokenizes and encodes
    caption ``k % 10`` (with this package's own ``load_image`` and ``CaptionEncoder``; the
    vocabulary is taken from the build), in a shuffling DataLoader. Same batch size, same
    DataLoader workers, same run; both produce the same tensors (float32 images, int64 ids,
    float32 multi-hot labels).

    python benchmarks/cub_data.py              # default size, about a minute on 2 cores
    python benchmarks/cub_data.py --images 200 --steps 10

Prints one JSON object and writes it to ``--out`` (default benchmarks/results/cub_data.json);
the data lives in a temporary folder (under ``--work-dir`` if given), removed afterwards.
``--smoke``: 24 images, batch 4, one loader worker, 1 warm-up and 3 timed batches per loader,
the same code paths and comparison. Writes no file unless ``--out`` is given. The machine is
shared: the load average at start and end is part of the result. The fixture's JPEGs (about
170x140) are smaller than CUB's (about 500x375), so both the build and the JPEG loader are
faster here than on the real images.
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

RESULTS = Path(__file__).resolve().parent / "results" / "cub_data.json"


def _jpeg_folder_dataset(source: Path, vocabulary: tuple[str, ...]):
    """The naive baseline, built here so that this script imports torch only when it runs."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from data_pipelines.cub.image import load_image
    from data_pipelines.cub.source import merge_colours, read_source
    from data_pipelines.cub.text import CaptionEncoder

    class JpegFolderCUB(Dataset):
        """Per item: decode the JPEG and resize it, tokenize and encode the caption; lists read once."""

        def __init__(self):
            cub = read_source(source)
            self.cub, self.train = cub, cub.splits["train"]
            self.labels = merge_colours(self.train.colours).astype(np.float32)
            self.encoder = CaptionEncoder(vocabulary)

        def __len__(self):
            return 10 * len(self.train)

        def __getitem__(self, position):
            index, caption = divmod(int(position), 10)
            image = load_image(self.cub.image_member("train", index), self.train.listed_at[index])
            text = self.encoder.encode(self.train.captions[index][caption]).astype(np.int64)
            return (torch.from_numpy(image).to(torch.float32).div_(255.0), torch.from_numpy(text),
                    torch.from_numpy(self.labels[index]))

    return JpegFolderCUB()


def _jpeg_rate(source: Path, vocabulary: tuple[str, ...], args) -> float:
    dataset = _jpeg_folder_dataset(source, vocabulary)
    return samples_per_second(shuffled_batches(dataset, args.batch_size, args.workers), args.warmup, args.steps,
                              lambda batch: len(batch[2]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_reader_arguments(parser, images=800, fixture="CUB")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file written")
    args = parse_with_smoke(parser, DATASET_READER_SMOKE, argv)
    load_at_start = [round(value, 2) for value in os.getloadavg()]

    from data_pipelines.cub import build_cub, write_cub_200_2011_fixture

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        started = time.perf_counter()
        source = write_cub_200_2011_fixture(work / "CUB_200_2011", args.images, seed=0)
        fixture_s = time.perf_counter() - started

        started = time.perf_counter()
        manifests = build_cub(source, work / "shards", workers=args.build_workers, progress=False,
                              log=lambda _: None)
        build_s = time.perf_counter() - started
        built_samples = sum(m.num_samples for m in manifests.values())
        built_images = sum(m.source["images"]["count"] for m in manifests.values())
        vocabulary = manifests["train"].modality("text").vocabulary

        shard_rate = shard_reader_rate(work / "shards" / "train", args)
        jpeg_rate = _jpeg_rate(source, vocabulary, args)
        train_samples = manifests["train"].num_samples

    result = {
        "benchmark": "cub_data",
        "smoke": args.smoke,
        "build_images_per_s": round(built_images / build_s, 1),
        "build_samples_per_s": round(built_samples / build_s, 1),
        "build_s": round(build_s, 2),
        "shard_samples_per_s": round(shard_rate, 1),
        "jpeg_samples_per_s": round(jpeg_rate, 1),
        "speedup": round(shard_rate / jpeg_rate, 2),
        "config": {
            "dataset": "CUB fixture in the CUB_200_2011 layout as MMVM reads it (data_pipelines.cub.fixture), "
                       "JPEGs of about 170x140, 10 captions per image",
            "images": args.images, "built_images": built_images, "built_samples": built_samples,
            "train_samples": train_samples, "vocabulary_size": len(vocabulary),
            "build_workers": args.build_workers or min(4, os.cpu_count() or 1),
            "batch_size": args.batch_size, "loader_workers": args.workers, "timed_steps": args.steps,
            "warmup_steps": args.warmup, "fixture_s": round(fixture_s, 2),
            "baseline": "map-style Dataset: JPEG decode + bilinear resize + word tokenize + ids per item, "
                        "shuffling DataLoader",
        },
        "machine": {**machine_facts(), "load_average_at_start": load_at_start},
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
