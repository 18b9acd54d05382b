"""``mmplatform classifiers train --data DIR``: the coherence classifiers of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmplatform.cli import register_command
from mmplatform.commands.arguments import fraction, positive_int
from mmplatform.paths import CLASSIFIERS_SUBDIR


def _train(args: argparse.Namespace) -> int:
    from mmplatform.classifier_gate import ClassifierSettings
    from mmplatform.coherence_classifiers import train_classifiers
    from mmplatform.ray_runtime import ensure_ray

    from data_pipelines.datasets import dataset_descriptor
    from data_pipelines.manifest import load_manifest

    data = Path(args.data)
    out = Path(args.out) if args.out else data / CLASSIFIERS_SUBDIR
    rules = dataset_descriptor(load_manifest(data / "train").dataset).label_rules
    min_score = args.min_score if args.min_score is not None else rules.default_min_score
    ensure_ray()
    settings = ClassifierSettings(
        max_epochs=args.max_epochs, min_score=min_score, min_epochs=args.min_epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, num_workers=args.num_workers,
    )
    scores = train_classifiers(data, out, settings)  # a ClassifierError is reported as one line by the CLI
    print(json.dumps({"classifiers": str(out), "score": rules.classifier_score, "test_score": scores}, indent=2))
    return 0


@register_command("classifiers")
def add(nouns: argparse._SubParsersAction) -> None:
    from data_pipelines.datasets import LABEL_KIND_RULES
    from mmplatform.classifier_gate import DEFAULT_MAX_EPOCHS

    gates = ", ".join(f"{rules.classifier_score} {rules.default_min_score:g} for {kind}-label data"
                      for kind, rules in LABEL_KIND_RULES.items())
    parser = nouns.add_parser("classifiers", help="coherence classifiers")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    train = verbs.add_parser(
        "train", help="train one classifier per modality until each passes the score gate",
        description="Train one coherence classifier per modality on Ray Train, measuring the test score (accuracy "
                    "for classes, mean average precision for attributes) after every epoch, until every modality "
                    "reaches --min-score (or --max-epochs is hit, which fails naming the weak modality). The "
                    "classifiers are stored with their score.",
    )
    train.add_argument("--data", required=True, help="dataset dir holding train/ and test/ shards")
    train.add_argument("--out", help=f"where to store them (default: DATA/{CLASSIFIERS_SUBDIR})")
    train.add_argument("--min-score", type=fraction, default=None,
                       help=f"test score every modality must reach (default: evaluation.min_classifier_score's, {gates})")
    train.add_argument("--max-epochs", type=positive_int, default=DEFAULT_MAX_EPOCHS,
                       help=f"cap on the epochs (default {DEFAULT_MAX_EPOCHS})")
    train.add_argument("--min-epochs", type=positive_int, default=1, help="epochs before the gate may stop (default 1)")
    train.add_argument("--batch-size", type=positive_int, default=128)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-workers", type=positive_int, default=1, help="Ray Train workers")
    train.set_defaults(run=_train)
