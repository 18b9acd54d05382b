"""The MIMIC-CXR descriptor (frontal, lateral and report findings, as in the thesis; or MMVM's two
views): its build command, networks, classifiers, metrics and sweep defaults.

MIMIC-CXR is credentialed data: its manifests are ``restricted`` and the platform then tracks no
image and no text of it (``mmplatform.privacy``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipelines.words import decode_text
from data_pipelines.datasets import ALL_MODALITIES, ClassifierSpec, DatasetDescriptor, ProfileDefaults, register_dataset

NAME = "mimic"

THESIS_MODEL = {"latent_dim": 512}
"""The thesis's MIMIC-CXR setting (seed 000, Table 5.2): latent 512, lr 5e-4, beta 1."""
THESIS_SPACE = {"model.latent_dim": {"type": "choice", "values": [512]},
                "training.learning_rate": {"type": "choice", "values": [5e-4]}}

RANKING_METRICS = ["coherence_auroc", "coherence_ap", "latent_probe_auroc", "latent_probe_ap"]
"""Findings are scored by AUROC (MMVM, the clinical habit) and average precision per label."""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    from data_pipelines.mimic.builder import DEFAULT_SAMPLES_PER_SHARD, VARIANTS
    from data_pipelines.split_writer import add_writer_arguments
    from mmplatform.commands.arguments import non_negative_int, positive_int

    variants = "; ".join(f"{name}: {variant.summary}" for name, variant in VARIANTS.items())
    parser.description = (
        "Build MIMIC-CXR shards + manifest.json into OUT/train, OUT/validate and OUT/test from MIMIC-CXR-JPG 2.0.0 in "
        "SOURCE (files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg and the metadata, chexpert and split CSVs, .csv or "
        "the released .csv.gz) and the MIMIC-CXR reports (files/pXX/pNNNNNNNN/sNNNNNNNN.txt, under SOURCE or "
        f"--reports). Variants: {variants}. Studies without the needed views or text are skipped and counted in "
        "the manifest. The shards are marked restricted: no image or text of them is tracked unless "
        "tracking.log_restricted_samples is set. An identical existing build is left alone."
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="thesis",
                        help="which published dataset to build (default thesis)")
    parser.add_argument("--reports", type=Path, default=None,
                        help="folder holding the reports' files/ tree when it is not SOURCE")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="side of the stored images (default: the variant's, thesis 128, mmvm 224)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the mmvm subject split (default 0)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="keep the first N studies of each split (the vocabulary still comes from all of train)")
    add_writer_arguments(parser, DEFAULT_SAMPLES_PER_SHARD)


def build_from_arguments(args: argparse.Namespace, out: Path) -> None:
    from data_pipelines.mimic.builder import build_mimic

    build_mimic(args.source, out, variant=args.variant, reports=args.reports, image_size=args.image_size,
                seed=args.seed, samples_per_shard=args.samples_per_shard, limit=args.limit, force=args.force,
                workers=args.workers)


DESCRIPTOR = register_dataset(DatasetDescriptor(
    name=NAME,
    summary="MIMIC-CXR frontal + lateral X-rays (+ report findings) from MIMIC-CXR-JPG; credentialed, restricted",
    label_kind="multi",
    modalities=("frontal", "lateral", "text"),
    add_build_arguments=add_build_arguments,
    build_from_arguments=build_from_arguments,
    # Residual nets for the square grayscale views (128 or 224), the word CNN for the findings.
    networks={"text": "words_conv", ALL_MODALITIES: "resnet_image"},
    classifiers={"text": ClassifierSpec("words_attributes"), ALL_MODALITIES: ClassifierSpec("resnet_image_attributes")},
    metrics=(*RANKING_METRICS, "prd", "log_likelihood"),
    # Cross-modal coherence by AUROC, and PRD weighted up because its values are lower.
    objective_weights={"coherence_auroc_missing": 1.0, "prd": 2.0},
    official_files="MIMIC-CXR-JPG 2.0.0 from PhysioNet (credentialed access, https://physionet.org/content/"
                   "mimic-cxr-jpg/): files/ with the JPEGs and mimic-cxr-2.0.0-{metadata,chexpert,split}.csv(.gz); "
                   "for the thesis variant also the reports of MIMIC-CXR (https://physionet.org/content/mimic-cxr/, "
                   "files/pXX/pNNNNNNNN/sNNNNNNNN.txt) in the same files/ tree or under --reports",
    decode_text=decode_text,  # data_pipelines.words: numpy only, cheap for the CLI's help
    profiles={
        "local": ProfileDefaults(
            folder=NAME,
            config={"model": THESIS_MODEL, "evaluation": {"metrics": [*RANKING_METRICS, "prd"]}},
            space=THESIS_SPACE,
        ),
        # For tests: built from a small fixture in the official layout (``--source``); the ranking
        # metrics run, PRD is left to the trainings of the test suite.
        "smoke": ProfileDefaults(
            folder=f"{NAME}-smoke",
            config={"model": {"latent_dim": 8}, "evaluation": {"metrics": [*RANKING_METRICS, "log_likelihood"]}},
            space={"model.latent_dim": {"type": "choice", "values": [8]},
                   "training.learning_rate": {"type": "choice", "values": [1e-4]}},
            classifier_max_epochs=1,
        ),
        "cluster": ProfileDefaults(folder=NAME, config={"model": THESIS_MODEL}, space=THESIS_SPACE),
    },
))
