"""MIMIC-CXR-JPG 2.0.0 with the MIMIC-CXR reports: the official layout, and reading it with every line checked.

Layout of a PhysioNet ``mimic-cxr-jpg/2.0.0`` download (``SOURCE``)::

    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
                                        one JPEG per image: files/p<first two digits of the subject>/
                                        p<subject_id>/s<study_id>/<dicom_id>.jpg
    mimic-cxr-2.0.0-metadata.csv.gz     one row per image: dicom_id, subject_id, study_id,
                                        PerformedProcedureStepDescription, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-chexpert.csv.gz     one row per study: subject_id, study_id, then the 14 CheXpert
                                        labels, each 1.0, 0.0, -1.0 (uncertain) or empty (not mentioned)
    mimic-cxr-2.0.0-split.csv.gz        one row per image: dicom_id, study_id, subject_id, split
                                        (train / validate / test)

The release ships the CSVs gzipped; a gunzipped ``.csv`` is read alike (both at once is refused,
as it is unclear which one is meant). The reports come from MIMIC-CXR (``mimic-cxr-reports.zip``),
one per study, ``files/p10/p10000032/s50414267.txt``, looked for under ``SOURCE`` or under a
separate reports root (``read_source(..., reports=DIR)``, ``DIR/files/...``).

``read_source`` reads and cross-checks the CSVs completely before anything is built: columns by
name (any order, extra columns ignored), ids, label values, duplicates, and that the split and
label files agree with the metadata about each study's subject. Images are only located
(``MIMICSource.image_sizes`` checks they exist), reports only when the builder reads them. Every
error is a ``MIMICError`` with a one-line message naming the file and, where there is one, the line
and the column. Messages name files, lines, columns and ids, never a value of a report or an image.

Imports nothing beyond numpy and the standard library, so the fixture and the image workers can use it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_DIR = "files"
IMAGE_SUFFIX = ".jpg"
REPORT_SUFFIX = ".txt"
CSV_FILES = {
    "metadata": "mimic-cxr-2.0.0-metadata.csv",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv",
    "split": "mimic-cxr-2.0.0-split.csv",
}
"""The three CSVs by role, without the ``.gz`` the release adds."""
CSV_SUFFIXES = (".csv.gz", ".csv")

CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
"""The 14 label columns of ``mimic-cxr-2.0.0-chexpert.csv``, in the file's order."""

METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
"""The metadata columns read (the file has more: PerformedProcedureStepDescription, Rows, Columns, ...)."""
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
OFFICIAL_SPLITS = ("train", "validate", "test")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
NOT_MENTIONED = float("nan")
"""An empty label cell: the report does not mention the finding."""
_LABEL_VALUES = {POSITIVE, NEGATIVE, UNCERTAIN}

_DICOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class MIMICError(ValueError):
    """Unusable MIMIC-CXR input; the one-line message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class ImageRecord:
    """One row of the metadata file."""

    dicom_id: str
    view: str
    """``ViewPosition`` as written (``PA``, ``AP``, ``LATERAL``, ``LL``, ...; empty where not recorded)."""
    line: int
    """The metadata line listing the image (for messages)."""


@dataclass(frozen=True)
class Study:
    """One study: its images (sorted by dicom_id), CheXpert labels and official split."""

    subject_id: int
    study_id: int
    images: tuple[ImageRecord, ...]
    labels: np.ndarray | None
    """float32 ``[14]`` over ``CHEXPERT_LABELS``: 1, 0, -1 or NaN (not mentioned); None without a label row."""
    labels_line: int | None
    split: str | None
    """``train``, ``validate`` or ``test`` from the split file; None when the split file was not read."""

    @property
    def folder(self) -> str:
        """``files/pXX/pNNNNNNNN/sNNNNNNNN``: the study's image folder (and, with ``.txt``, its report)."""
        subject = str(self.subject_id)
        return f"{IMAGE_DIR}/p{subject[:2]}/p{subject}/s{self.study_id}"

    def views(self, names: tuple[str, ...]) -> tuple[ImageRecord, ...]:
        """The study's images whose ViewPosition is one of ``names``, by dicom_id."""
        return tuple(image for image in self.images if image.view in names)


@dataclass(frozen=True)
class MIMICSource:
    """The checked CSVs of one MIMIC-CXR-JPG folder; images and reports are located, not opened."""

    root: Path
    reports_root: Path
    csv_paths: dict[str, Path]
    """The CSV files read, by role (``metadata``, ``chexpert``, and ``split`` when read)."""
    csv_digests: dict[str, dict]
    """sha256 and size of each CSV's (decompressed) content, by role: the same for ``.csv`` and ``.csv.gz``."""
    studies: tuple[Study, ...]
    """Every study of the metadata, sorted by (subject_id, study_id)."""

    @property
    def metadata_path(self) -> Path:
        return self.csv_paths["metadata"]

    def listed_at(self, image: ImageRecord) -> str:
        return f"{self.metadata_path}:{image.line}"

    def image_path(self, study: Study, image: ImageRecord) -> Path:
        return self.root / study.folder / f"{image.dicom_id}{IMAGE_SUFFIX}"

    def report_path(self, study: Study) -> Path:
        return self.reports_root / f"{study.folder}{REPORT_SUFFIX}"

    def image_sizes(self, images: list[tuple[Study, ImageRecord]]) -> np.ndarray:
        """Byte size of each image; raises MIMICError naming the first missing one and its metadata line."""
        sizes = np.empty(len(images), dtype=np.int64)
        for position, (study, image) in enumerate(images):
            path = self.image_path(study, image)
            try:
                sizes[position] = os.stat(path).st_size
            except FileNotFoundError:
                raise MIMICError(f"{path}: missing image file (listed at {self.listed_at(image)})") from None
            except OSError as exc:
                raise MIMICError(f"{path}: cannot read ({exc.strerror}; listed at {self.listed_at(image)})") from None
        return sizes

    def read_report(self, study: Study) -> tuple[str, bytes]:
        """The study's report as text, and its bytes (for the build's identity)."""
        path = self.report_path(study)
        listed_at = self.listed_at(study.images[0])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MIMICError(f"{path}: missing report of study {study.study_id} (listed at {listed_at}; reports "
                             f"are looked for under {self.reports_root}/{IMAGE_DIR}/, see --reports)") from None
        except OSError as exc:
            raise MIMICError(f"{path}: cannot read ({exc.strerror}; study listed at {listed_at})") from None
        try:
            return data.decode("utf-8"), data
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise MIMICError(f"{path}:{line}: not UTF-8 text (study listed at {listed_at})") from None


def read_source(root: str | Path, reports: str | Path | None = None, official_split: bool = True) -> MIMICSource:
    """Read and check the CSVs of the MIMIC-CXR-JPG folder ``root``.

    ``reports``: the folder holding the reports' ``files/`` (default ``root``). ``official_split``:
    read ``mimic-cxr-2.0.0-split.csv(.gz)`` too (a build with a split of its own does not need it).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MIMICError(f"{root}: not a folder (expected MIMIC-CXR-JPG 2.0.0: {IMAGE_DIR}/, "
                         f"{', '.join(name + '.gz' for name in CSV_FILES.values())})")
    reports_root = root if reports is None else Path(reports).expanduser()
    if not reports_root.is_dir():
        raise MIMICError(f"{reports_root}: the reports folder does not exist (expected {IMAGE_DIR}/pXX/pNNNNNNNN/"
                         f"sNNNNNNNN{REPORT_SUFFIX} under it)")
    roles = ("metadata", "chexpert", "split") if official_split else ("metadata", "chexpert")
    paths = {role: _csv_path(root, CSV_FILES[role]) for role in roles}
    contents = {role: _read_csv_bytes(path) for role, path in paths.items()}
    digests = {role: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for role, data in contents.items()}

    images_of, subject_of = _read_metadata(paths["metadata"], contents["metadata"])
    labels_of = _read_chexpert(paths["chexpert"], contents["chexpert"], subject_of, paths["metadata"])
    split_of = (_read_split(paths["split"], contents["split"], images_of, subject_of, paths["metadata"])
                if official_split else {})

    studies = []
    for study_id in sorted(images_of, key=lambda s: (subject_of[s][0], s)):
        images = tuple(sorted(images_of[study_id], key=lambda image: image.dicom_id))
        labels, labels_line = labels_of.get(study_id, (None, None))
        studies.append(Study(subject_of[study_id][0], study_id, images, labels, labels_line,
                             split_of.get(study_id)))
    return MIMICSource(root, reports_root, paths, digests, tuple(studies))


# ---------------------------------------------------------------- the three CSVs


def _read_metadata(path: Path, data: bytes) -> tuple[dict[int, list[ImageRecord]], dict[int, tuple[int, int]]]:
    """``{study_id: [images]}`` and ``{study_id: (subject_id, first line)}``."""
    images_of: dict[int, list[ImageRecord]] = {}
    subject_of: dict[int, tuple[int, int]] = {}
    first_line_of: dict[str, int] = {}
    for line, row in _rows(path, data, METADATA_COLUMNS):
        dicom_id = _dicom_id(path, line, row["dicom_id"])
        subject_id = _id(path, line, row, "subject_id")
        study_id = _id(path, line, row, "study_id")
        if dicom_id in first_line_of:
            raise MIMICError(f"{path}:{line}: dicom_id {dicom_id} is listed again (first at line "
                             f"{first_line_of[dicom_id]})")
        first_line_of[dicom_id] = line
        _same_subject(path, line, study_id, subject_id, subject_of, path)
        images_of.setdefault(study_id, []).append(ImageRecord(dicom_id, row["ViewPosition"].strip(), line))
    if not images_of:
        raise MIMICError(f"{path}:2: no image rows (one row per image is expected after the header)")
    return images_of, subject_of


def _read_chexpert(path: Path, data: bytes, subject_of: dict[int, tuple[int, int]],
                   metadata_path: Path) -> dict[int, tuple[np.ndarray, int]]:
    """``{study_id: (labels, line)}`` for the studies of the metadata (rows of other studies are checked, not kept)."""
    labels_of: dict[int, tuple[np.ndarray, int]] = {}
    line_of: dict[int, int] = {}
    for line, row in _rows(path, data, CHEXPERT_COLUMNS):
        subject_id = _id(path, line, row, "subject_id")
        study_id = _id(path, line, row, "study_id")
        if study_id in line_of:
            raise MIMICError(f"{path}:{line}: study {study_id} is listed again (first at line {line_of[study_id]})")
        line_of[study_id] = line
        values = np.array([_label(path, line, name, row[name]) for name in CHEXPERT_LABELS], dtype=np.float32)
        if study_id in subject_of:
            _same_subject(path, line, study_id, subject_id, subject_of, metadata_path)
            labels_of[study_id] = (values, line)
    return labels_of


def _read_split(path: Path, data: bytes, images_of: dict[int, list[ImageRecord]],
                subject_of: dict[int, tuple[int, int]], metadata_path: Path) -> dict[int, str]:
    """``{study_id: split}``: every image of the metadata listed once, the images of a study in one split."""
    study_of_dicom = {image.dicom_id: study for study, images in images_of.items() for image in images}
    line_of: dict[str, int] = {}
    split_of: dict[int, tuple[str, int]] = {}
    for line, row in _rows(path, data, SPLIT_COLUMNS):
        dicom_id = _dicom_id(path, line, row["dicom_id"])
        subject_id = _id(path, line, row, "subject_id")
        study_id = _id(path, line, row, "study_id")
        split = row["split"].strip()
        if split not in OFFICIAL_SPLITS:
            raise MIMICError(f"{path}:{line}: column 'split' is not one of {', '.join(OFFICIAL_SPLITS)}")
        if dicom_id in line_of:
            raise MIMICError(f"{path}:{line}: dicom_id {dicom_id} is listed again (first at line {line_of[dicom_id]})")
        line_of[dicom_id] = line
        if dicom_id not in study_of_dicom:
            raise MIMICError(f"{path}:{line}: dicom_id {dicom_id} is not in {metadata_path}")
        if study_of_dicom[dicom_id] != study_id:
            raise MIMICError(f"{path}:{line}: dicom_id {dicom_id} belongs to study {study_of_dicom[dicom_id]} in "
                             f"{metadata_path}, not {study_id}")
        _same_subject(path, line, study_id, subject_id, subject_of, metadata_path)
        if study_id in split_of and split_of[study_id][0] != split:
            raise MIMICError(f"{path}:{line}: study {study_id} is in two splits ({split_of[study_id][0]} at line "
                             f"{split_of[study_id][1]}, {split} here)")
        split_of.setdefault(study_id, (split, line))
    for study_id, images in images_of.items():
        for image in images:
            if image.dicom_id not in line_of:
                raise MIMICError(f"{metadata_path}:{image.line}: dicom_id {image.dicom_id} has no row in {path}")
    return {study_id: split for study_id, (split, _) in split_of.items()}


def _same_subject(path: Path, line: int, study_id: int, subject_id: int, subject_of: dict[int, tuple[int, int]],
                  metadata_path: Path) -> None:
    known = subject_of.setdefault(study_id, (subject_id, line))
    if known[0] != subject_id:
        raise MIMICError(f"{path}:{line}: study {study_id} belongs to subject {known[0]} ({metadata_path}:{known[1]}), "
                         f"not {subject_id}")


def _label(path: Path, line: int, column: str, text: str) -> float:
    text = text.strip()
    if not text:
        return NOT_MENTIONED
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in _LABEL_VALUES:
        # The value itself is not repeated: the file is credentialed data.
        raise MIMICError(f"{path}:{line}: column {column!r} is not 1.0, 0.0, -1.0 or empty")
    return value


def _id(path: Path, line: int, row: dict[str, str], column: str) -> int:
    text = row[column].strip()
    if not (text.isascii() and text.isdigit()) or len(text) < 2:
        raise MIMICError(f"{path}:{line}: column {column!r} is not a numeric id")
    return int(text)


def _dicom_id(path: Path, line: int, text: str) -> str:
    text = text.strip()
    # Joined to a folder as <dicom_id>.jpg: anything but a plain name could point elsewhere.
    if _DICOM_ID.fullmatch(text) is None or ".." in text:
        raise MIMICError(f"{path}:{line}: column 'dicom_id' is not a plain image id")
    return text


# ---------------------------------------------------------------- CSV files


def _csv_path(root: Path, name: str) -> Path:
    found = [root / (name[: -len(".csv")] + suffix) for suffix in CSV_SUFFIXES]
    present = [path for path in found if path.is_file()]
    if not present:
        raise MIMICError(f"{found[0]}: missing file (MIMIC-CXR-JPG 2.0.0 ships it gzipped; a gunzipped "
                         f"{found[1].name} is read too)")
    if len(present) > 1:
        raise MIMICError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one of them")
    return present[0]


def _read_csv_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MIMICError(f"{path}: cannot read ({exc.strerror})") from None
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise MIMICError(f"{path}: not a readable gzip file ({exc})") from None
    return data


def _rows(path: Path, data: bytes, columns: tuple[str, ...]):
    """``(line, {column: value})`` for every non-blank row after the header, fields counted and checked."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MIMICError(f"{path}:{line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = _next_record(path, reader, 1)
    if not header or not any(field.strip() for field in header):
        raise MIMICError(f"{path}:1: empty header, expected the columns {', '.join(columns)}")
    header = [field.strip() for field in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise MIMICError(f"{path}:1: column {repeated[0]!r} is named twice")
    missing = [name for name in columns if name not in header]
    if missing:
        raise MIMICError(f"{path}:1: missing column {missing[0]!r} (needed: {', '.join(columns)})")
    index = {name: header.index(name) for name in columns}
    line = reader.line_num
    while (fields := _next_record(path, reader, line + 1)) is not None:
        start, line = line + 1, reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != len(header):
            raise MIMICError(f"{path}:{start}: {len(fields)} fields, the header (line 1) has {len(header)}")
        yield start, {name: fields[i] for name, i in index.items()}


def _next_record(path: Path, reader, start: int) -> list[str] | None:
    """The next record, or None at the end; a CSV syntax error names the line the record starts on."""
    try:
        return next(reader, None)
    except csv.Error as exc:
        raise MIMICError(f"{path}:{start}: malformed CSV ({exc})") from None
