"""The CUB descriptor (image + captions, as in MMVAE and MMVM): its build command, networks,
classifiers, metrics and sweep defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipelines.words import decode_text
from data_pipelines.datasets import ClassifierSpec, DatasetDescriptor, ProfileDefaults, register_dataset

NAME = "cub"

MMVM_MODEL = {"latent_dim": 128}
"""MMVM's CUB latent (seeds-digest 2.1)."""
MMVM_BETAS = {"type": "loguniform", "low": 0.25, "high": 4.0}
"""MMVM's CUB betas, 2^-2 .. 2^2, as a continuous range."""

RANKING_METRICS = ["coherence_ap", "coherence_auroc", "latent_probe_ap", "latent_probe_auroc"]
"""MMVM scores the colour groups by average precision and AUROC, coherence and latent probe alike."""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    from data_pipelines.cub.builder import DEFAULT_SAMPLES_PER_SHARD
    from data_pipelines.split_writer import add_writer_arguments
    from mmplatform.commands.arguments import positive_int

    parser.description = (
        "Build CUB image-captions shards + manifest.json into OUT/train and OUT/test from either official form in "
        "SOURCE, recognised by what it holds: the cleaned release of MMVAE (cub.zip or its folder: train/ and test/ "
        "class folders, text_trainvalclasses.txt and text_testclasses.txt), or CUB_200_2011 as MMVM reads it "
        "(images/, train_idx.txt/test_idx.txt, captions/<class>/<image>.txt, attributes/image_attribute_labels.txt). One "
        "sample per (image, caption) pair; images 64x64; captions 32 word ids over the train split's words counted "
        "more than 3 times; labels the 6 primary-colour groups of MMVM where the attribute file exists, none "
        "otherwise. An identical existing build is left alone."
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="keep the first N images of each split")
    add_writer_arguments(parser, DEFAULT_SAMPLES_PER_SHARD)


def build_from_arguments(args: argparse.Namespace, out: Path) -> None:
    from data_pipelines.cub.builder import build_cub

    build_cub(args.source, out, samples_per_shard=args.samples_per_shard, limit=args.limit, force=args.force,
              workers=args.workers)


DESCRIPTOR = register_dataset(DatasetDescriptor(
    name=NAME,
    summary="CUB image-captions shards from the MMVAE release or CUB_200_2011 with captions",
    label_kind="multi",  # the colour groups; a build without the attribute file has none (its manifest says so)
    modalities=("image", "text"),
    add_build_arguments=add_build_arguments,
    build_from_arguments=build_from_arguments,
    # The 64x64 image nets are CelebA's (MoPoE's residual nets); captions get the word CNN.
    networks={"image": "image64_resnet", "text": "words_conv"},
    classifiers={"image": ClassifierSpec("image64_attributes"), "text": ClassifierSpec("words_attributes")},
    metrics=(*RANKING_METRICS, "prd", "log_likelihood"),
    # As for CelebA: cross-modal coherence, and PRD weighted up because its values are lower.
    objective_weights={"coherence_ap_missing": 1.0, "prd": 2.0},
    official_files="either the cleaned release of MMVAE, cub.zip (http://www.robots.ox.ac.uk/~yshi/mmdgm/datasets/"
                   "cub.zip) or its folder, which has no labels; or CUB_200_2011 (images/, attributes/) with the "
                   "Reed et al. captions as captions/<class>/<image>.txt and train_idx.txt/test_idx.txt, as MMVM reads it",
    decode_text=decode_text,  # data_pipelines.words: numpy only, cheap for the CLI's help
    profiles={
        "local": ProfileDefaults(
            folder=NAME,
            config={"model": MMVM_MODEL, "evaluation": {"metrics": [*RANKING_METRICS, "prd"]}},
            space={"model.latent_dim": {"type": "choice", "values": [128]}, "model.beta": MMVM_BETAS},
        ),
        # For tests: built from a small fixture in the CUB_200_2011 layout (``--source``); the
        # ranking metrics run, PRD is left to the trainings of the test suite.
        "smoke": ProfileDefaults(
            folder=f"{NAME}-smoke",
            config={"model": {"latent_dim": 8}, "evaluation": {"metrics": [*RANKING_METRICS, "log_likelihood"]}},
            space={"model.latent_dim": {"type": "choice", "values": [8]},
                   "training.learning_rate": {"type": "choice", "values": [1e-4]}},
            classifier_max_epochs=1,
        ),
        "cluster": ProfileDefaults(folder=NAME, config={"model": MMVM_MODEL}, space={"model.beta": MMVM_BETAS}),
    },
))
