"""The CelebA descriptor (bimodal image + attribute text, as in MoPoE and mmJSD): its build
command, networks, classifiers, metrics and sweep defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipelines.datasets import ClassifierSpec, DatasetDescriptor, ProfileDefaults, register_dataset

NAME = "celeba"

LEARNING_RATES = {"type": "loguniform", "low": 1e-4, "high": 5e-4}
"""Up to MoPoE's CelebA rate (5e-4): at 1e-3 its residual nets can blow up within a step."""

MOPOE_MODEL = {
    # MoPoE's CelebA setting (anchors-mmvae 4.2): 32 shared + 32 style dimensions per modality,
    # beta 2.5, and the style KLs weighted beta * beta_style * beta_m_style = 2.5 * 2 * (1 | 5).
    "latent_dim": 32, "style_latent_dim": 32, "beta": 2.5, "style_beta": {"image": 5.0, "text": 25.0},
}


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    from data_pipelines.celeba.builder import DEFAULT_SAMPLES_PER_SHARD
    from data_pipelines.celeba.text import TEXT_OFFSETS
    from data_pipelines.split_writer import add_writer_arguments
    from mmplatform.commands.arguments import non_negative_int, positive_int

    parser.description = (
        "Build CelebA shards + manifest.json into OUT/train and OUT/test from the official files in SOURCE: "
        "img_align_celeba/*.jpg (178x218), list_attr_celeba.txt, list_eval_partition.txt. Images are centre-cropped "
        "to 148 and resized to 64x64 (bicubic); the text is the MoPoE/mmJSD attribute string, 256 characters over "
        "the MoPoE alphabet; labels are the 40 attributes, multi-hot. An identical existing build is left alone."
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the text offsets (default 0)")
    parser.add_argument("--text-offset", choices=TEXT_OFFSETS, default="random",
                        help="where the attribute text starts in its 256 characters: a seeded random offset per "
                             "image, as published (default), or none (at 0, right-padded)")
    parser.add_argument("--train-partitions", type=_partitions, default=(0,),
                        help="comma-separated list_eval_partition values that form train/ (default 0)")
    parser.add_argument("--test-partitions", type=_partitions, default=(1,),
                        help="values that form test/ (default 1: the official validation split, which MoPoE "
                             "and MMVM evaluate on)")
    parser.add_argument("--limit", type=positive_int, default=None, help="keep the first N images of each split")
    add_writer_arguments(parser, DEFAULT_SAMPLES_PER_SHARD)


def _partitions(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of 0, 1, 2") from None
    if not values or any(value not in (0, 1, 2) for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: partitions are 0 (train), 1 (validation), 2 (test)")
    return values


def build_from_arguments(args: argparse.Namespace, out: Path) -> None:
    from data_pipelines.celeba.builder import build_celeba

    build_celeba(
        args.source, out, seed=args.seed, text_offset=args.text_offset, train_partitions=args.train_partitions,
        test_partitions=args.test_partitions, samples_per_shard=args.samples_per_shard, limit=args.limit,
        force=args.force, workers=args.workers,
    )


def decode_text(ids, vocabulary) -> str:
    from data_pipelines.celeba.text import decode_text as decode

    return decode(ids, vocabulary)


DESCRIPTOR = register_dataset(DatasetDescriptor(
    name=NAME,
    summary="bimodal CelebA (image + attribute text) shards from the official files",
    label_kind="multi",
    modalities=("image", "text"),
    add_build_arguments=add_build_arguments,
    build_from_arguments=build_from_arguments,
    networks={"image": "image64_resnet", "text": "celeba_text_conv"},
    classifiers={"image": ClassifierSpec("image64_attributes"), "text": ClassifierSpec("celeba_text_attributes")},
    metrics=("coherence_ap", "latent_probe_ap", "prd", "log_likelihood"),
    # As for PolyMNIST: cross-modal coherence, and PRD weighted up because its values are lower.
    objective_weights={"coherence_ap_missing": 1.0, "prd": 2.0},
    official_files="the aligned CelebA release: img_align_celeba/ (the JPEGs), list_attr_celeba.txt and "
                   "list_eval_partition.txt in one folder (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)",
    decode_text=decode_text,
    profiles={
        "local": ProfileDefaults(
            folder=NAME,
            config={"model": MOPOE_MODEL, "evaluation": {"metrics": ["coherence_ap", "latent_probe_ap", "prd"]}},
            space={"model.latent_dim": {"type": "choice", "values": [32]}, "training.learning_rate": LEARNING_RATES},
        ),
        # For tests: built from a small fixture in the official layout (``--source``); the
        # multi-label metrics run, PRD is left to the trainings of the test suite.
        "smoke": ProfileDefaults(
            folder=f"{NAME}-smoke",
            config={"model": {"latent_dim": 8, "style_latent_dim": 4},
                    "evaluation": {"metrics": ["coherence_ap", "latent_probe_ap", "log_likelihood"]}},
            space={"model.latent_dim": {"type": "choice", "values": [8]},
                   "training.learning_rate": {"type": "choice", "values": [1e-4]}},
            classifier_max_epochs=1,
        ),
        "cluster": ProfileDefaults(folder=NAME, config={"model": MOPOE_MODEL},
                                   space={"model.latent_dim": {"type": "choice", "values": [32]},
                                          "training.learning_rate": LEARNING_RATES}),
    },
))
