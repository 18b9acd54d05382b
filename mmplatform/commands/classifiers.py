"""``mmplatform classifiers train --data DIR``: the coherence classifiers of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmplatform.cli import register_command

DEFAULT_SUBDIR = "classifiers"


def _train(args: argparse.Namespace) -> int:
    from mmplatform.coherence_classifiers import ClassifierSettings, train_classifiers
    from mmplatform.ray_runtime import ensure_ray

    data = Path(args.data)
    out = Path(args.out) if args.out else data / DEFAULT_SUBDIR
    ensure_ray()
    settings = ClassifierSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        seed=args.seed, num_workers=args.num_workers,
    )
    accuracy = train_classifiers(data, out, settings)
    print(json.dumps({"classifiers": str(out), "test_accuracy": accuracy}, indent=2))
    return 0


@register_command("classifiers")
def add(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("classifiers", help="coherence classifiers")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    train = verbs.add_parser("train", help="train one classifier per modality and store its test accuracy")
    train.add_argument("--data", required=True, help="dataset dir holding train/ and test/ shards")
    train.add_argument("--out", help=f"where to store them (default: DATA/{DEFAULT_SUBDIR})")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    train.set_defaults(run=_train)
