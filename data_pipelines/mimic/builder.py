"""MIMIC-CXR -> shards, in one of the published variants (``VARIANTS``), from the official files (``source.py``).

``build_mimic(source, out, variant=...)`` writes ``out/train``, ``out/validate`` and ``out/test``
(shards + manifest.json); the platform trains on train/ and evaluates on test/. Variants:

- ``thesis`` (Klug's MoPoE-MIMIC): one sample per study that has a PA frontal image, a lateral
  image (ViewPosition ``LATERAL`` or ``LL``) and a FINDINGS section in its report. When a study
  has several PA (or several lateral) images, the first by dicom_id is taken. Modalities
  ``frontal`` and ``lateral`` (uint8 ``[1, 128, 128]``, Laplace) and ``text`` (uint16 ``[128]``
  lowercased word ids, categorical; the vocabulary is the train split's words counted more than
  3 times, after ``<exc>``, ``<pad>``, ``<eos>``). Labels: Lung Opacity, Pleural Effusion,
  Support Devices, multi-hot; a study with an uncertain (-1) value in any of the three is left
  out, an empty value (not mentioned) is negative. Split: the official split file, per study.
- ``mmvm`` (MMVM's MIMIC-CXR): one sample per (frontal, lateral) image pair of a study, every
  frontal (``AP``, ``PA``) with every lateral (``LATERAL``, ``LL``), frontal-major, both by
  dicom_id. Modalities ``frontal`` and ``lateral``, uint8 ``[1, S, S]`` (S = ``image_size``,
  default 224), no text. Labels: the 14 CheXpert labels, positive only where the file says 1.0
  (0, -1 and empty are negative). Split: by subject, seeded, 80/10/10 (``SUBJECT_SPLIT``) of the
  subjects with at least one sample: all studies of a subject in one split.

Skipped studies: a study lacking what its variant needs is left out and counted, once, under
the first reason that applies, in the order of ``SKIP_REASONS``: ``no_frontal``, ``no_lateral``,
``no_labels`` (no row in the CheXpert file: such studies are left out by both variants rather
than read as all negative), ``uncertain_labels`` (thesis), ``no_findings`` (thesis; only studies
that pass the other checks have their reports read). The counts, over the whole source, are the
manifests' ``builder.skipped``. A missing report file is an error, not a skip (every MIMIC-CXR
study has one; a missing one means a wrong ``reports`` folder).

Order and reproducibility: studies are sorted by (subject_id, study_id) whatever the CSVs' row
order; within a split, samples follow that order. Each image is decoded once, in worker processes
by an ordered map, so the shard bytes do not depend on the number of workers; the subject split
ranks subjects by a hash of (seed, subject_id), so it depends neither on numpy nor on the
order of the files. Same inputs, same parameters, same Pillow -> the same shard bytes.

Up to date: a split's identity (variant, parameters, vocabulary, Pillow version, sha256 of the
CSVs' content, which is the same for ``.csv`` and ``.csv.gz``, sha256 of the reports used, names
and byte sizes of the images used) is in its manifest; an intact build with the same identity
is left alone, ``force`` rebuilds. Image contents are not hashed.

Every split is ``restricted`` (credentialed data). The log lines and error messages of the build
name files, lines and ids, never report text or pixel values.

Failure: the CSVs, every report used and the existence of every image used are checked before
anything is written; a bad image stops the build of its split, and ``write_split`` leaves no
partial split behind.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from data_pipelines.manifest import Manifest
from data_pipelines.mimic import image as mimic_image
from data_pipelines.mimic.report import PARSER, extract_findings
from data_pipelines.mimic.source import (
    CHEXPERT_LABELS,
    CSV_FILES,
    OFFICIAL_SPLITS,
    POSITIVE,
    UNCERTAIN,
    ImageRecord,
    MIMICError,
    MIMICSource,
    Study,
    read_source,
)
from data_pipelines.modality import ModalitySpec
from data_pipelines.parallel import decoded_in_order
from data_pipelines.split_writer import resolved_progress_and_workers, write_splits
from data_pipelines.shards import Sample, SplitHeader
from data_pipelines.words import MIN_COUNT, TEXT_DTYPE, TOKENIZER, build_vocabulary, encode_tokens, word_tokenize

DATASET = "mimic"
VERSION = "1.0"
SPLITS = OFFICIAL_SPLITS
"""``train``, ``validate``, ``test``: the folders written under ``out``."""
DEFAULT_SAMPLES_PER_SHARD = 500
"""Upper bound (see shards.plan_shards): ~17 MB shards for ``thesis``, ~50 MB for ``mmvm`` at 224."""
IMAGES_PER_TASK = 8
"""Images per worker task: a full-size MIMIC-CXR JPEG (about 2500x3000) takes tens of milliseconds."""

FRONTAL, LATERAL, TEXT = "frontal", "lateral", "text"
TEXT_LENGTH = 128
"""127 word ids + ``<eos>``, ``<pad>`` fill."""
LOWERCASE = True
THESIS_LABELS = ("Lung Opacity", "Pleural Effusion", "Support Devices")
SKIP_REASONS = ("no_frontal", "no_lateral", "no_labels", "uncertain_labels", "no_findings")
SUBJECT_SPLIT = {"train": 0.8, "validate": 0.1, "test": 0.1}


@dataclass(frozen=True)
class Variant:
    """What one published variant takes from MIMIC-CXR and how it labels and splits it."""

    name: str
    summary: str
    frontal_views: tuple[str, ...]
    lateral_views: tuple[str, ...]
    all_pairs: bool
    """True: every frontal x lateral pair of a study is a sample; False: one sample per study, from
    the first frontal and the first lateral image by dicom_id."""
    with_text: bool
    """A ``text`` modality from the report's FINDINGS section (studies without one are skipped)."""
    label_names: tuple[str, ...]
    drop_uncertain: bool
    """True: a study with -1 in any of ``label_names`` is skipped; False: -1 is negative."""
    split: str
    """A ``SPLIT_RULES`` entry."""
    image_size: int
    """Side of the stored images unless the build says otherwise."""

    @property
    def skip_reasons(self) -> tuple[str, ...]:
        """The ``SKIP_REASONS`` that apply to this variant, in their order."""
        unused = {"uncertain_labels": not self.drop_uncertain, "no_findings": not self.with_text}
        return tuple(reason for reason in SKIP_REASONS if not unused.get(reason, False))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["summary"]  # prose: rewording it should not rebuild anything
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


VARIANTS: dict[str, Variant] = {
    "thesis": Variant(
        name="thesis",
        summary="one sample per study: PA frontal, lateral, FINDINGS text; 3 labels, uncertain studies out; "
                "the official split",
        frontal_views=("PA",), lateral_views=("LATERAL", "LL"), all_pairs=False, with_text=True,
        label_names=THESIS_LABELS, drop_uncertain=True, split="official", image_size=128,
    ),
    "mmvm": Variant(
        name="mmvm",
        summary="one sample per frontal (AP, PA) x lateral pair of a study, no text; 14 CheXpert labels, "
                "non-positive = negative; a seeded 80/10/10 split by subject",
        frontal_views=("AP", "PA"), lateral_views=("LATERAL", "LL"), all_pairs=True, with_text=False,
        label_names=CHEXPERT_LABELS, drop_uncertain=False, split="subject", image_size=224,
    ),
}


@dataclass(frozen=True)
class _Selected:
    """A study kept by the variant: the images it pairs, its labels and its text tokens."""

    study: Study
    frontals: tuple[ImageRecord, ...]
    laterals: tuple[ImageRecord, ...]
    labels: np.ndarray
    """uint8 multi-hot over the variant's label names."""
    tokens: tuple[str, ...] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.frontals) * len(self.laterals)

    @property
    def images(self) -> tuple[ImageRecord, ...]:
        """Decoding order: frontals, then laterals."""
        return self.frontals + self.laterals


# ---------------------------------------------------------------- splits


def _official_split(selected: Sequence[_Selected], seed: int) -> dict[str, list[_Selected]]:
    return {split: [s for s in selected if s.study.split == split] for split in SPLITS}


def _subject_split(selected: Sequence[_Selected], seed: int) -> dict[str, list[_Selected]]:
    """The subjects with samples ranked by sha256(seed, subject_id), then cut 80/10/10 (validate and test
    sizes by Python's ``round``, train the rest)."""
    subjects = sorted({s.study.subject_id for s in selected},
                      key=lambda subject: hashlib.sha256(f"mimic-subject-split\0{seed}\0{subject}".encode()).digest())
    held_out = {split: round(len(subjects) * SUBJECT_SPLIT[split]) for split in ("validate", "test")}
    train = len(subjects) - held_out["validate"] - held_out["test"]
    bounds = {"train": (0, train), "validate": (train, train + held_out["validate"]),
              "test": (train + held_out["validate"], len(subjects))}
    split_of = {subject: split for split, (start, stop) in bounds.items() for subject in subjects[start:stop]}
    return {split: [s for s in selected if split_of[s.study.subject_id] == split] for split in SPLITS}


@dataclass(frozen=True)
class SplitRule:
    assign: Callable[[Sequence[_Selected], int], dict[str, list[_Selected]]]
    description: dict[str, Any]
    """What the manifests record about the split (with the seed where ``seeded``)."""
    seeded: bool
    needs_split_file: bool

    def describe(self, seed: int) -> dict[str, Any]:
        return {**self.description, "seed": seed} if self.seeded else dict(self.description)


SPLIT_RULES: dict[str, SplitRule] = {
    "official": SplitRule(_official_split, {"kind": "official", "file": CSV_FILES["split"], "unit": "study"},
                          seeded=False, needs_split_file=True),
    "subject": SplitRule(_subject_split, {"kind": "subject", "fractions": dict(SUBJECT_SPLIT), "unit": "subject",
                                          "ranking": "sha256(seed, subject_id)"},
                         seeded=True, needs_split_file=False),
}


# ---------------------------------------------------------------- the build


def modality_specs(variant: str, vocabulary: Sequence[str] = (), image_size: int | None = None
                   ) -> tuple[ModalitySpec, ...]:
    """The modalities of a variant's shards: ``frontal``, ``lateral`` and, for ``thesis``, ``text``
    (whose ``vocabulary`` a build takes from its train split)."""
    chosen = _variant(variant)
    size = chosen.image_size if image_size is None else int(image_size)
    specs = [ModalitySpec(name=name, kind="image", shape=mimic_image.image_shape(size), dtype="uint8",
                          likelihood="laplace") for name in (FRONTAL, LATERAL)]
    if chosen.with_text:
        specs.append(ModalitySpec(name=TEXT, kind="text", shape=(TEXT_LENGTH,), dtype=TEXT_DTYPE,
                                  likelihood="categorical", vocabulary=tuple(vocabulary)))
    return tuple(specs)


@dataclass(frozen=True)
class _PlannedSplit:
    name: str
    header: SplitHeader
    studies: list[_Selected]
    """The split's studies, in order, after ``limit``."""
    texts: np.ndarray | None
    """uint16 ``[len(studies), 128]`` (thesis)."""

    @property
    def count(self) -> int:
        return sum(s.num_samples for s in self.studies)


def build_mimic(
    source: str | Path,
    out: str | Path,
    *,
    variant: str,
    reports: str | Path | None = None,
    image_size: int | None = None,
    seed: int = 0,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    limit: int | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Manifest]:
    """Build (or confirm up to date) ``out/train``, ``out/validate`` and ``out/test`` from MIMIC-CXR-JPG.

    ``variant``: a ``VARIANTS`` name. ``reports``: the folder holding the reports' ``files/``
    (default ``source``; read by variants with text only). ``image_size``: side of the stored
    images (default the variant's). ``seed``: the subject split's (variants that split by subject;
    recorded in the manifest only there). ``limit`` keeps the first N studies of each split (the
    vocabulary is still the whole train split's). ``workers`` decoding processes default to
    min(4, CPUs); 1 decodes in this process. ``progress`` (a tqdm bar on stderr) defaults to
    whether stderr is a terminal. Raises MIMICError (a ValueError) for bad input, ValueError for
    bad arguments.
    """
    chosen = _variant(variant)
    _check_arguments(image_size, seed, samples_per_shard, limit, workers)
    size = chosen.image_size if image_size is None else int(image_size)
    seed, samples_per_shard = int(seed), int(samples_per_shard)
    limit = None if limit is None else int(limit)
    progress, workers = resolved_progress_and_workers(progress, workers)
    out = Path(out).expanduser()
    rule = SPLIT_RULES[chosen.split]
    mimic = read_source(source, reports=reports if chosen.with_text else None,
                        official_split=rule.needs_split_file)
    planned = _plan(mimic, chosen, rule, size, seed, samples_per_shard, limit, log)

    def samples_of(split: _PlannedSplit, written: int, pool) -> Iterator[Sample]:
        # The studies whose samples reach ``written`` (a study gives one sample per view pair).
        needed = int(np.searchsorted(np.cumsum([s.num_samples for s in split.studies]), written) + 1)
        studies = split.studies[:needed]
        return _samples(studies, split.texts, _decoded_images(mimic, studies, size, pool, workers))

    return write_splits(out, planned, samples_per_shard, samples_of, force=force, workers=workers, progress=progress,
                        log=log)


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"variant is {name!r}, expected one of {list(VARIANTS)}")
    return VARIANTS[name]


def _check_arguments(image_size, seed, samples_per_shard, limit, workers) -> None:
    def positive_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

    if image_size is not None and not positive_int(image_size):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not positive_int(samples_per_shard):
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    if limit is not None and not positive_int(limit):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if workers is not None and not positive_int(workers):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


def _plan(mimic: MIMICSource, variant: Variant, rule: SplitRule, size: int, seed: int, samples_per_shard: int,
          limit: int | None, log: Callable[[str], None]) -> list[_PlannedSplit]:
    """Select, label, read the texts of and split the studies; describe each split. Checks every
    report and image used before anything is written."""
    skipped = Counter({reason: 0 for reason in variant.skip_reasons})
    selected = _select(mimic, variant, skipped)
    reports_digest = None
    if variant.with_text:
        selected, reports_digest = _with_findings(mimic, selected, skipped)
    log(f"{variant.name}: {len(selected)} of {len(mimic.studies)} studies kept; skipped "
        + ", ".join(f"{count} {reason}" for reason, count in skipped.items()))

    by_split = rule.assign(selected, seed)
    for split, studies in by_split.items():
        if not studies:
            raise MIMICError(f"{mimic.metadata_path}: no study of the {split} split has what the {variant.name} "
                             f"variant needs ({len(selected)} studies kept in all; skipped: "
                             f"{', '.join(f'{n} {reason}' for reason, n in skipped.items())})")
    vocabulary: tuple[str, ...] = ()
    if variant.with_text:
        vocabulary = build_vocabulary(s.tokens for s in by_split["train"])
    id_of = {word: i for i, word in enumerate(vocabulary)}
    specs = modality_specs(variant.name, vocabulary, size)
    chosen = {split: studies[:limit] for split, studies in by_split.items()}
    # Existence of every image used, before any writing.
    sizes = {split: mimic.image_sizes([(s.study, image) for s in studies for image in s.images])
             for split, studies in chosen.items()}

    text = None
    if variant.with_text:
        text = {"source": "report findings section", "parser": PARSER, "tokenizer": TOKENIZER,
                "lowercase": LOWERCASE, "min_count": MIN_COUNT, "length": TEXT_LENGTH, "vocabulary_from": "train"}
    planned = []
    for split, studies in chosen.items():
        listing = hashlib.sha256()
        pairs = [(s.study, image) for s in studies for image in s.images]
        for (study, image), byte_size in zip(pairs, sizes[split].tolist()):
            listing.update(f"{study.folder}/{image.dicom_id}\t{byte_size}\n".encode())
        builder: dict[str, Any] = {
            "variant": variant.to_json(),
            "limit": limit,
            "samples_per_shard": samples_per_shard,
            "image": {"size": size, "mode": "L", "crop": "centre_square", "resample": "lanczos",
                      "pillow": PIL.__version__},
            "text": text,
            "labels": {"names": list(variant.label_names), "positive": "1.0",
                       "uncertain": "study skipped" if variant.drop_uncertain else "negative",
                       "not_mentioned": "negative", "no_label_row": "study skipped"},
            "split": rule.describe(seed),
            "studies": {"in_source": len(mimic.studies), "kept": len(selected), "in_split": len(by_split[split]),
                        "used": len(studies)},
            "skipped": dict(skipped),
        }
        source: dict[str, Any] = {
            "kind": "mimic-cxr-jpg-2.0.0",
            "path": str(mimic.root.resolve()),
            "csv": mimic.csv_digests,
            "images": {"count": len(pairs), "names_and_sizes_sha256": listing.hexdigest()},
        }
        if variant.with_text:
            source["reports"] = {"path": str(mimic.reports_root.resolve()), **reports_digest}
        header = SplitHeader(DATASET, VERSION, split, specs, "multi", variant.label_names, builder=builder,
                             source=source, seed=seed if rule.seeded else None, restricted=True)
        texts = (np.stack([encode_tokens(s.tokens, id_of, TEXT_LENGTH) for s in studies])
                 if variant.with_text else None)
        planned.append(_PlannedSplit(split, header, studies, texts))
    return planned


def _select(mimic: MIMICSource, variant: Variant, skipped: Counter) -> list[_Selected]:
    """The studies with the variant's views and usable labels (texts are read afterwards)."""
    columns = [CHEXPERT_LABELS.index(name) for name in variant.label_names]
    selected = []
    for study in mimic.studies:
        frontals, laterals = study.views(variant.frontal_views), study.views(variant.lateral_views)
        if not frontals:
            skipped["no_frontal"] += 1
        elif not laterals:
            skipped["no_lateral"] += 1
        elif study.labels is None:
            skipped["no_labels"] += 1
        elif variant.drop_uncertain and bool((study.labels[columns] == UNCERTAIN).any()):
            skipped["uncertain_labels"] += 1
        else:
            if not variant.all_pairs:
                frontals, laterals = frontals[:1], laterals[:1]
            labels = (study.labels[columns] == POSITIVE).astype(np.uint8)
            selected.append(_Selected(study, frontals, laterals, labels))
    return selected


def _with_findings(mimic: MIMICSource, selected: list[_Selected], skipped: Counter
                   ) -> tuple[list[_Selected], dict[str, Any]]:
    """The studies whose report has a FINDINGS section, with its lowercased tokens; a digest of the reports read."""
    digest = hashlib.sha256()
    kept = []
    for chosen in selected:
        text, data = mimic.read_report(chosen.study)
        digest.update(f"{chosen.study.folder}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        findings = extract_findings(text)
        if findings is None:
            skipped["no_findings"] += 1
            continue
        tokens = tuple(word_tokenize(findings, lowercase=LOWERCASE))
        kept.append(_Selected(chosen.study, chosen.frontals, chosen.laterals, chosen.labels, tokens))
    return kept, {"count": len(selected), "sha256": digest.hexdigest()}


def _decoded_images(mimic: MIMICSource, studies: Sequence[_Selected], size: int,
                    pool: ProcessPoolExecutor | None, workers: int) -> Iterator[np.ndarray]:
    tasks = [(str(mimic.image_path(s.study, image)), mimic.listed_at(image), size)
             for s in studies for image in s.images]
    return decoded_in_order(mimic_image.load_images, tasks, IMAGES_PER_TASK, pool, workers)


def _samples(studies: Sequence[_Selected], texts: np.ndarray | None, images: Iterator[np.ndarray]
             ) -> Iterator[Sample]:
    with closing(images):
        for position, chosen in enumerate(studies):
            frontals = [next(images) for _ in chosen.frontals]
            laterals = [next(images) for _ in chosen.laterals]
            for frontal, lateral in itertools.product(frontals, laterals):
                arrays = {FRONTAL: frontal, LATERAL: lateral}
                if texts is not None:
                    arrays[TEXT] = texts[position]
                yield Sample(arrays=arrays, label=chosen.labels)
