"""A small MIMIC-CXR-JPG 2.0.0 with reports, in the exact official layout, for tests and benchmarks (no download).

``write_mimic_fixture(root)`` writes ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` (real grayscale
JPEGs, 64-200 px a side in varied aspect ratios, so the centre crop matters), the three CSVs
(``mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz``, or plain ``.csv``) with the official
columns, and one report per study, ``files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` (under ``root`` or a
separate ``reports_root``), laid out like the real reports (a ``FINAL REPORT`` line, then
``EXAMINATION:``, ``INDICATION:``, ``TECHNIQUE:``, ``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``
..., lines indented by one blank, wrapped), so the real loading code runs on it unchanged.

What it exercises: views ``PA``, ``AP``, ``LATERAL``, ``LL``, ``AP AXIAL`` and empty; studies
with two PA or two lateral images (the metadata lists them out of dicom_id order), studies
without a lateral or without a frontal image; reports without a FINDINGS section (impression
only, or a combined ``FINDINGS AND IMPRESSION:``), some with RECOMMENDATION(S) / NOTIFICATION
sections after the impression; label cells 1.0, 0.0, -1.0 and empty; a few studies without a
row in the CheXpert file; subjects with one to three studies; the official split by subject.
Every subject's first study is complete (PA, lateral, findings, no uncertain thesis label), so
each split has samples in both variants.

The labels leave traces a classifier can learn: Pleural Effusion a bright band at the lung
bases, Lung Opacity a bright blob in a lung, Support Devices a bright line and a ring,
Cardiomegaly a wider heart, in frontal and lateral images; and each positive label its own
phrase in the findings (``... pleural effusion is present``, ``... opacity ...``, ``endotracheal
tube ...``).

Everything derives from ``seed``; subject ``i`` depends on ``(seed, i)`` only. ``synthetic_subjects``
returns the ground truth (views, label cells, whether a report has findings) for the tests to
count with. Only numpy and PIL are used.
"""

from __future__ import annotations

import csv
import gzip
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.mimic.source import CHEXPERT_COLUMNS, CHEXPERT_LABELS, CSV_FILES, IMAGE_DIR, SPLIT_COLUMNS

JPEG_QUALITY = 90
METADATA_HEADER = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
"""The columns of the official ``mimic-cxr-2.0.0-metadata.csv``, in its order."""

# (views in metadata order, weight); the first is every subject's first study.
_VIEW_PATTERNS = (
    (("PA", "LATERAL"), 40),
    (("AP", "LATERAL"), 8),
    (("PA", "LL"), 7),
    (("AP",), 11),
    (("PA",), 4),
    (("LATERAL",), 4),
    (("PA", "PA", "LATERAL"), 7),
    (("LATERAL", "PA", "LATERAL"), 6),
    (("AP", "PA", "LATERAL", "LL"), 5),
    (("PA", "LATERAL", ""), 4),
    (("AP AXIAL", "LATERAL"), 4),
)
_VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                  "AP AXIAL": "antero-posterior", "": ""}
_LABEL_CELLS = ("1.0", "0.0", "-1.0", "")
_LABEL_WEIGHTS = np.array([0.25, 0.2, 0.07, 0.48])

_POSITIVE_PHRASES = {
    "Atelectasis": "Streaky bibasilar atelectasis.",
    "Cardiomegaly": "The heart is moderately enlarged.",
    "Consolidation": "Dense consolidation in the lingula.",
    "Edema": "Mild interstitial edema with vascular congestion.",
    "Enlarged Cardiomediastinum": "The mediastinum appears widened.",
    "Fracture": "Healing fracture of the left seventh rib.",
    "Lung Lesion": "A 2 cm nodule projects over the right upper lobe.",
    "Lung Opacity": "Patchy airspace opacity in the right lower lobe.",
    "Pleural Effusion": "A moderate left pleural effusion is present with layering fluid.",
    "Pleural Other": "Apical pleural thickening on the right.",
    "Pneumonia": "Findings are concerning for pneumonia.",
    "Pneumothorax": "Small right apical pneumothorax.",
    "Support Devices": "Endotracheal tube terminates 4 cm above the carina; a right PICC line ends in the SVC.",
}
_UNCERTAIN_PHRASES = {
    "Lung Opacity": "Possible subtle opacity at the left base, cannot exclude early infection.",
    "Pleural Effusion": "Blunting of the costophrenic angle may reflect a trace effusion.",
    "Support Devices": "A tube is partially visualized, position indeterminate.",
}
_NORMAL_PHRASES = (
    "The lungs are clear.", "The cardiomediastinal silhouette is within normal limits.",
    "No acute osseous abnormality.", "Hilar contours are normal.", "There is no pneumothorax.",
    "The visualized upper abdomen is unremarkable.", "Lung volumes are low.",
)
_INDICATIONS = ("cough and fever", "shortness of breath", "chest pain", "evaluate for pneumonia",
                "line placement", "follow-up of effusion")
_REPORT_KINDS = (("findings", 72), ("impression_only", 10), ("findings_and_impression", 5),
                 ("findings_recommendation", 8), ("wet_read", 5))
_FORCED: dict[tuple[int, int], dict] = {
    (0, 1): {"views": ("PA", "LATERAL"), "kind": "impression_only"},
    (0, 2): {"views": ("PA",)},
    (1, 1): {"views": ("PA", "LATERAL", "PA"), "has_label_row": False},
    (1, 2): {"views": ("AP", "PA", "LATERAL", "LL"), "uncertain": "Pleural Effusion", "kind": "findings"},
    (2, 1): {"views": ("LATERAL",)},
}
"""Cases every fixture holds, by (subject index, study index), whatever the seed: a report without
findings, studies without a lateral, without a label row, with an uncertain thesis label, and
without a frontal image."""


@dataclass(frozen=True)
class SyntheticImage:
    dicom_id: str
    view: str
    """ViewPosition as written (may be empty)."""
    width: int
    height: int
    jpeg: bytes


@dataclass(frozen=True)
class SyntheticStudy:
    subject_id: int
    study_id: int
    split: str
    """The official split written for its images (the subject's)."""
    images: tuple[SyntheticImage, ...]
    """In metadata order (not sorted by dicom_id)."""
    label_cells: tuple[str, ...]
    """The 14 CheXpert cells as written: ``1.0``, ``0.0``, ``-1.0`` or empty."""
    has_label_row: bool
    report: str
    findings: str | None
    """The FINDINGS section's words joined by single spaces; None when the report has none."""

    @property
    def folder(self) -> str:
        subject = str(self.subject_id)
        return f"{IMAGE_DIR}/p{subject[:2]}/p{subject}/s{self.study_id}"

    def cell(self, label: str) -> str:
        return self.label_cells[CHEXPERT_LABELS.index(label)]


@dataclass(frozen=True)
class SyntheticSubject:
    subject_id: int
    studies: tuple[SyntheticStudy, ...]


def synthetic_subjects(num_subjects: int = 40, seed: int = 0) -> list[SyntheticSubject]:
    """The subjects the fixture holds, in generation order. Official split by subject index:
    7 of 10 train, then one validate and two test (the platform evaluates on test)."""
    if num_subjects < 3:
        raise ValueError(f"num_subjects must be at least 3 (one per split), got {num_subjects}")
    subject_ids: set[int] = set()
    study_ids: set[int] = set()
    subjects = []
    for index, subject_seed in enumerate(np.random.SeedSequence(seed).spawn(num_subjects)):
        rng = np.random.default_rng(subject_seed)
        subject_id = _unique(rng, subject_ids, (10 + index % 10) * 1_000_000, 1_000_000)
        split = {7: "validate", 8: "test", 9: "test"}.get(index % 10, "train")
        if num_subjects < 10 and index < 3:
            split = ("train", "validate", "test")[index]
        num_studies = 3 if index < 2 else 2 if index == 2 else int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        studies = tuple(_study(rng, subject_id, _unique(rng, study_ids, 50_000_000, 10_000_000), split, first=k == 0,
                               forced=_FORCED.get((index, k), {}))
                        for k in range(num_studies))
        subjects.append(SyntheticSubject(subject_id, studies))
    return subjects


def write_mimic_fixture(root: str | Path, num_subjects: int = 40, seed: int = 0, gzip_csvs: bool = True,
                        reports_root: str | Path | None = None) -> Path:
    """Write the fixture under ``root`` (created if needed) and return ``root``.

    ``gzip_csvs``: the CSVs as the release ships them (``.csv.gz``), else plain ``.csv``.
    ``reports_root``: write the reports there (``reports_root/files/...``) instead of under ``root``.
    """
    root = Path(root)
    reports = root if reports_root is None else Path(reports_root)
    subjects = synthetic_subjects(num_subjects, seed)
    metadata, chexpert, split = [METADATA_HEADER], [CHEXPERT_COLUMNS], [SPLIT_COLUMNS]
    for subject in subjects:
        for study in subject.studies:
            folder = root / study.folder
            folder.mkdir(parents=True, exist_ok=True)
            for number, image in enumerate(study.images):
                (folder / f"{image.dicom_id}.jpg").write_bytes(image.jpeg)
                metadata.append(_metadata_row(study, image, number))
                split.append((image.dicom_id, str(study.study_id), str(study.subject_id), study.split))
            if study.has_label_row:
                chexpert.append((str(study.subject_id), str(study.study_id), *study.label_cells))
            report_path = reports / f"{study.folder}.txt"
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(study.report)
    for role, rows in (("metadata", metadata), ("chexpert", chexpert), ("split", split)):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        data = buffer.getvalue().encode()
        name = CSV_FILES[role]
        if gzip_csvs:
            (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / name).write_bytes(data)
    return root


def _unique(rng: np.random.Generator, taken: set[int], base: int, span: int) -> int:
    while True:
        value = base + int(rng.integers(0, span))
        if value not in taken:
            taken.add(value)
            return value


def _study(rng: np.random.Generator, subject_id: int, study_id: int, split: str, first: bool,
           forced: dict) -> SyntheticStudy:
    weights = np.array([weight for _, weight in _VIEW_PATTERNS], dtype=float)
    views = _VIEW_PATTERNS[0][0] if first else _VIEW_PATTERNS[int(rng.choice(len(weights), p=weights / weights.sum()))][0]
    views = forced.get("views", views)
    cells = [str(c) for c in rng.choice(_LABEL_CELLS, size=len(CHEXPERT_LABELS), p=_LABEL_WEIGHTS)]
    if "uncertain" in forced:
        cells[CHEXPERT_LABELS.index(forced["uncertain"])] = "-1.0"
    if first:  # complete: no uncertain thesis label
        for label in ("Lung Opacity", "Pleural Effusion", "Support Devices"):
            if cells[CHEXPERT_LABELS.index(label)] == "-1.0":
                cells[CHEXPERT_LABELS.index(label)] = "0.0"
    no_finding = CHEXPERT_LABELS.index("No Finding")
    cells[no_finding] = "" if "1.0" in cells[:no_finding] + cells[no_finding + 1:] else "1.0"
    has_label_row = forced.get("has_label_row", first or rng.random() >= 0.05)
    positive = {label for label, cell in zip(CHEXPERT_LABELS, cells) if cell == "1.0"}
    uncertain = {label for label, cell in zip(CHEXPERT_LABELS, cells) if cell == "-1.0"}
    images = tuple(_image(rng, view, positive) for view in views)
    kinds = [kind for kind, _ in _REPORT_KINDS]
    kind_weights = np.array([weight for _, weight in _REPORT_KINDS], dtype=float)
    kind = "findings" if first else kinds[int(rng.choice(len(kinds), p=kind_weights / kind_weights.sum()))]
    kind = forced.get("kind", kind)
    report, findings = _report(rng, views, positive, uncertain, kind)
    return SyntheticStudy(subject_id, study_id, split, images, tuple(cells), has_label_row, report, findings)


def _metadata_row(study: SyntheticStudy, image: SyntheticImage, number: int) -> tuple[str, ...]:
    portable = any(i.view == "AP" for i in study.images)
    description = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
    date = 21000101 + (study.study_id % 80) * 100 + study.study_id % 28
    time = f"{(study.study_id % 24):02d}{(study.study_id % 60):02d}{number:02d}.{study.study_id % 1000:03d}"
    return (image.dicom_id, str(study.subject_id), str(study.study_id), description, image.view, str(image.height),
            str(image.width), str(date), time, description, _VIEW_MEANINGS[image.view],
            "Recumbent" if portable else "Erect")


# ---------------------------------------------------------------- reports


def _report(rng: np.random.Generator, views: tuple[str, ...], positive: set[str], uncertain: set[str],
            kind: str) -> tuple[str, str | None]:
    """The report text, and its findings' words joined by single spaces (None without a FINDINGS section)."""
    sentences = [_POSITIVE_PHRASES[label] for label in CHEXPERT_LABELS if label in _POSITIVE_PHRASES
                 and label in positive]
    sentences += [_UNCERTAIN_PHRASES[label] for label in _UNCERTAIN_PHRASES if label in uncertain]
    normal = rng.choice(len(_NORMAL_PHRASES), size=int(rng.integers(1, 4)), replace=False)
    sentences += [_NORMAL_PHRASES[i] for i in sorted(normal)]
    if "Pleural Effusion" not in positive and rng.random() < 0.5:
        sentences.append("No pleural effusion.")
    findings = "  ".join(sentences)
    impression = ("No acute cardiopulmonary process." if not positive - {"No Finding"} else
                  " ".join(f"{i + 1}. {label} as above." for i, label in enumerate(sorted(positive - {"No Finding"}))))
    portable = "AP" in views
    sections = []
    if kind == "wet_read":
        sections.append(("WET READ", "___ ___ 10:15 AM  Preliminary read, see final report."))
    sections += [
        ("EXAMINATION", "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"),
        ("INDICATION", f"___-year-old with {_INDICATIONS[int(rng.integers(len(_INDICATIONS)))]}."),
        ("TECHNIQUE", "Portable AP view of the chest." if portable else "Chest PA and lateral."),
        ("COMPARISON", "Chest radiograph from ___." if rng.random() < 0.6 else "None."),
    ]
    if kind == "impression_only":
        sections.append(("IMPRESSION", findings + "  " + impression))
        findings_words = None
    elif kind == "findings_and_impression":
        sections.append(("FINDINGS AND IMPRESSION", findings + "  " + impression))
        findings_words = None
    else:
        sections += [("FINDINGS", findings), ("IMPRESSION", impression)]
        if kind == "findings_recommendation":
            sections += [("RECOMMENDATION(S)", "Follow-up chest radiograph in 6 weeks."),
                         ("NOTIFICATION", "The findings were discussed with Dr. ___ by telephone at 2:30 PM.")]
        findings_words = " ".join(findings.split())
    lines = [" " * 33 + "FINAL REPORT"]
    for name, body in sections:
        if name in ("FINDINGS", "IMPRESSION", "FINDINGS AND IMPRESSION") and rng.random() < 0.6:
            lines += [f" {name}:", " "] + [f" {line}" for line in textwrap.wrap(body, 76)]
        else:
            wrapped = textwrap.wrap(f"{name}:  {body}", 76)
            lines += [f" {line}" for line in wrapped]
        lines.append(" ")
    return "\n".join(lines) + "\n", findings_words


# ---------------------------------------------------------------- images


def _image(rng: np.random.Generator, view: str, positive: set[str]) -> SyntheticImage:
    width, height = int(rng.integers(64, 201)), int(rng.integers(64, 201))
    dicom_id = "-".join(f"{int(rng.integers(0, 2 ** 32)):08x}" for _ in range(5))
    lateral = view in ("LATERAL", "LL")
    pixels = _radiograph(rng, width, height, lateral, positive)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return SyntheticImage(dicom_id, view, width, height, buffer.getvalue())


def _radiograph(rng: np.random.Generator, width: int, height: int, lateral: bool, positive: set[str]) -> np.ndarray:
    """A cartoon chest film; everything that carries a label lies inside the centred square."""
    image = Image.new("L", (width, height), int(rng.integers(10, 35)))
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2

    def box(left: float, top: float, right: float, bottom: float) -> list[float]:
        return [x0 + left * side, y0 + top * side, x0 + right * side, y0 + bottom * side]

    draw.ellipse(box(0.08, 0.05, 0.92, 1.05), fill=int(rng.integers(105, 125)))  # soft tissue
    lungs = [box(0.2, 0.12, 0.5, 0.82)] if lateral else [box(0.14, 0.12, 0.46, 0.8), box(0.54, 0.12, 0.86, 0.8)]
    for lung in lungs:
        draw.ellipse(lung, fill=int(rng.integers(40, 60)))
    heart_width = 0.3 if "Cardiomegaly" in positive else 0.18
    draw.ellipse(box(0.5 - heart_width / 2 + (0.08 if lateral else 0.04), 0.45, 0.5 + heart_width / 2 + 0.04, 0.78),
                 fill=165)
    if "Pleural Effusion" in positive:
        draw.rectangle(box(0.14, 0.66, 0.86, 0.8), fill=205)
    if "Lung Opacity" in positive:
        cx = 0.32 if lateral else float(rng.choice([0.3, 0.7]))
        draw.ellipse(box(cx - 0.09, 0.3, cx + 0.09, 0.48), fill=185)
    if "Support Devices" in positive:
        draw.line(box(0.5, 0.0, 0.52, 0.5), fill=250, width=max(2, side // 30))
        draw.ellipse(box(0.64, 0.18, 0.76, 0.3), outline=250, width=max(2, side // 40))
    noise = rng.standard_normal((height, width), dtype=np.float32) * 6.0
    return np.clip(np.asarray(image).astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)
