"""``mmplatform data <dataset>``: build a dataset's shards and manifests.

One sub-command per registered dataset (``data_pipelines.datasets``): its descriptor adds the
arguments and builds. ``--source`` (the official files), ``--out`` and ``--force`` are common to all.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from data_pipelines.datasets import DatasetDescriptor, add_common_build_arguments, registered_datasets
from mmplatform.cli import register_command
from mmplatform.paths import dataset_dir


def _run(descriptor: DatasetDescriptor, args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if descriptor.source_required and args.source is None:
        print(f"mmplatform data {descriptor.name}: error: --source: {descriptor.name} is built from its official "
              f"files: {descriptor.official_files}", file=sys.stderr)
        return 2
    try:
        descriptor.build_from_arguments(args, out)
    except (ValueError, OSError) as exc:
        # Builder errors name the offending file, line or field; a traceback adds nothing for users.
        print(f"mmplatform data {descriptor.name}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{descriptor.name} shards are in {out}/train and {out}/test")
    return 0


@register_command("data")
def add(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("data", help="build dataset shards", description=__doc__.splitlines()[0])
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="<dataset>")
    for name, descriptor in sorted(registered_datasets().items()):
        sub = datasets.add_parser(name, help=descriptor.summary)
        add_common_build_arguments(sub, descriptor, dataset_dir(name))
        descriptor.add_build_arguments(sub)
        sub.set_defaults(run=partial(_run, descriptor))
