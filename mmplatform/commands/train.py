"""``mmplatform train --config FILE [section.field=value ...]``: one training on Ray Train."""

from __future__ import annotations

import argparse
import json

from mmplatform.cli import register_command


def _run(args: argparse.Namespace) -> int:
    from mmplatform.config import load_config
    from mmplatform.training.launcher import fit

    config = load_config(args.config, args.overrides)
    result = fit(config)
    print(json.dumps({"metrics": result.metrics, "checkpoint": result.checkpoint.path if result.checkpoint else None},
                     indent=2, default=str))
    return 0 if result.error is None else 1


@register_command("train")
def add(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser(
        "train", help="train one model (locally, or on the cluster in RAY_ADDRESS)",
        description="Train one multimodal VAE with Ray Train. Overrides look like model.beta=1.5.",
    )
    parser.add_argument("--config", help="YAML config file (sections data, model, training, evaluation, scaling, tracking)")
    parser.add_argument("overrides", nargs="*", help="section.field=value")
    parser.set_defaults(run=_run)
