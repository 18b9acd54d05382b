"""The two official forms of CUB image-captions: their layouts, and reading them with every line checked.

**Release form** (the cleaned ``cub.zip`` of Shi et al. 2019, read by iffsid/mmvae ``datasets.py``
``CUBSentences`` + ``vae_cub_image.py``, and by MultiVae's ``CUB``). ``PATH`` is ``cub.zip``, or the
folder it unpacks to (``cub/``), or a folder holding ``cub/``::

    cub/train/<class>/<image>.jpg       ImageFolder: the 150 train+val classes (8,855 images)
    cub/test/<class>/<image>.jpg        the 50 test classes (2,933 images)
    cub/text_trainvalclasses.txt        one caption per line, 10 per image (88,550 lines)
    cub/text_testclasses.txt            the same for test/ (29,330 lines)

Pairing (verified in the reference code): images are taken in torchvision ``ImageFolder`` order
(class folders sorted by name, files sorted within each folder, image extensions only), and
caption ``k`` of the text file belongs to image ``k // 10`` (mmvae's ``resampler``: ``idx // 10``;
MultiVae: ``self.image_data[index // 10]``). The reference code splits the whole file with
nltk's ``sent_tokenize`` rather than by lines. In the released ``text_testclasses.txt`` (checked:
29,330 lines, ASCII, none blank) every line ends in ``.`` and none holds two sentences by
``text.split_sentences``, so both give the same items (the train file was not available to
check); a line with two sentences, or without a final ``.``, would shift every later pairing there. Here the pairing is by line, and the tokenizer (``text.py``) still splits sentences
inside a line exactly as ``word_tokenize`` does.

**CUB_200_2011 form** (as thomassutter/mmvmvae ``utils/CUBDataset.py`` reads it: CUB_200_2011
plus Reed et al.'s per-image caption files and two index lists)::

    images/<class>/<image>.jpg          the CUB_200_2011 images
    idx2name.txt (MMVM) or images.txt   ``<image id> <class>/<image>.jpg``, ids from 1 (CUB's images.txt)
    train_idx.txt, test_idx.txt         one image index per line, from 0 (= image id - 1), in item order
    captions/<class>/<image>.txt        10 lines, one caption each (Reed et al.'s text_c10 files)
    attributes/image_attribute_labels.txt   optional: ``<image id> <attribute id> <is_present>
                                        <certainty id> <time>`` (CUB_200_2011; a few lines of the
                                        official file carry one more field; only the first 3 are read)
    labels.txt                          optional, MMVM's dense form: one row per image id, >= 263
                                        whitespace-separated 0/1 columns, column ``a - 1`` = attribute ``a``

Item ``k`` of a split is caption ``k % 10`` of the ``k // 10``-th image of its index list (MMVM:
``indices = [idx * 10 + i ...]``, captions read in that order). Labels (MMVM): the 15
``has_primary_color::*`` attributes (ids 249-263, MMVM's columns ``248:263``) merged by maximum into
the 6 groups of ``COLOUR_GROUPS``. The official attribute file is read when present, else
``labels.txt``; with neither, the dataset has no labels (nor has the release form).

``read_source`` reads and cross-checks every text file (captions, lists, labels) before anything
is built; images are only listed (``CUBSource.image_sizes`` checks they exist). Every error is a
``CUBError`` with a one-line message naming the file and, where there is one, the line.
Imports nothing beyond numpy and the standard library, so the fixture and the image workers
can use it.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

CAPTIONS_PER_IMAGE = 10
SPLITS = ("train", "test")

RELEASE_FOLDER = "cub"
RELEASE_TEXT_FILES = {"train": "text_trainvalclasses.txt", "test": "text_testclasses.txt"}
RELEASE_IMAGE_DIRS = {"train": "train", "test": "test"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``: the files ``ImageFolder`` lists (compared in lower case)."""

NAMES_FILES = ("idx2name.txt", "images.txt")
"""MMVM's name list, else CUB_200_2011's (the same ``<id> <path>`` format); the first present is read."""
INDEX_FILES = {"train": "train_idx.txt", "test": "test_idx.txt"}
IMAGE_DIR = "images"
CAPTION_DIR = "captions"
ATTRIBUTES_FILE = "attributes/image_attribute_labels.txt"
MMVM_LABELS_FILE = "labels.txt"

PRIMARY_COLOURS = ("blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive", "green", "pink",
                   "orange", "black", "white", "red", "buff")
"""``has_primary_color::<colour>``, CUB attribute ids 249-263 in this order (CUB_200_2011 ``attributes.txt``)."""
FIRST_COLOUR_ATTRIBUTE = 249
NUM_ATTRIBUTES = 312

COLOUR_GROUPS: dict[str, tuple[str, ...]] = {
    "blue2red": ("blue", "iridescent", "purple", "rufous", "green", "pink", "red"),
    "brown": ("brown",),
    "grey": ("grey",),
    "yellow": ("yellow", "olive", "orange", "buff"),
    "black": ("black",),
    "white": ("white",),
}
"""MMVM's ``color_combine`` (indices into the 15 colours: blue2red [0, 2, 3, 4, 8, 9, 13], brown [1],
grey [5], yellow [6, 7, 10, 14], black [11], white [12]). The paper's list for blue-to-red omits
rufous; the code, followed here, includes it."""
GROUP_NAMES = tuple(COLOUR_GROUPS)

FORMS = ("release", "cub_200_2011")


class CUBError(ValueError):
    """Unusable CUB input; the one-line message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class CUBSplit:
    """One split's images in item order, each with its 10 captions."""

    name: str
    image_names: tuple[str, ...]
    """``<class>/<file>`` of each image (the same names in both forms)."""
    captions: tuple[tuple[str, ...], ...]
    listed_at: tuple[str, ...]
    """``path:line`` that lists each image: its first caption line (release) or its index line (for messages)."""
    colours: np.ndarray | None = None
    """uint8 ``[num_images, 15]`` primary colours, or None without a label file."""

    def __len__(self) -> int:
        return len(self.image_names)


@dataclass(frozen=True)
class CUBSource:
    """A checked CUB source of either form; images are located but not opened."""

    path: Path
    """What the caller named (folder or zip)."""
    form: str
    splits: dict[str, CUBSplit]
    image_root: str
    """Folder of the images of ``image_member`` paths (a member prefix inside ``archive``)."""
    image_dirs: dict[str, str]
    """Per split, the sub-folder of ``image_root`` holding its images."""
    annotation_files: tuple[str, ...]
    """The files (relative to ``text_root``) that make up the build's identity."""
    text_root: Path
    label_file: str | None = None
    archive: Path | None = None
    _archive_sizes: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.label_file is not None

    def image_member(self, split: str, index: int) -> str:
        """The image's path: a file path, or a member name when ``archive`` is set."""
        parts = (self.image_root, self.image_dirs[split], self.splits[split].image_names[index])
        return "/".join(part for part in parts if part)

    def image_sizes(self, split: str, indices: np.ndarray) -> np.ndarray:
        """Byte size of each selected image; raises CUBError naming the first missing one."""
        sizes = np.empty(len(indices), dtype=np.int64)
        for position, index in enumerate(np.asarray(indices).tolist()):
            member = self.image_member(split, index)
            listed_at = self.splits[split].listed_at[index]
            if self.archive is not None:
                if member not in self._archive_sizes:
                    raise CUBError(f"{self.archive}: missing image {member} (listed at {listed_at})")
                sizes[position] = self._archive_sizes[member]
                continue
            try:
                sizes[position] = os.stat(member).st_size
            except FileNotFoundError:
                raise CUBError(f"{member}: missing image file (listed at {listed_at})") from None
            except OSError as exc:
                raise CUBError(f"{member}: cannot read ({exc.strerror}; listed at {listed_at})") from None
        return sizes

    def annotation_digests(self) -> dict[str, dict]:
        """sha256 and size of each annotation file (for the build's identity)."""
        digests = {}
        for name in self.annotation_files:
            if self.archive is not None:
                with zipfile.ZipFile(self.archive) as archive:
                    data = archive.read(f"{self.image_root}/{name}" if self.image_root else name)
            else:
                data = _read_file(self.text_root / name)
            digests[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        return digests


def read_source(path: str | Path) -> CUBSource:
    """Read and check a CUB source, its form chosen by what ``path`` holds (see the module doc)."""
    path = Path(path).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise CUBError(f"{path}: not a zip archive (expected cub.zip or a folder)")
        return _read_release_zip(path)
    if not path.is_dir():
        raise CUBError(f"{path}: no such file or folder")
    for root in (path, path / RELEASE_FOLDER):
        if (root / RELEASE_TEXT_FILES["train"]).is_file() or (root / RELEASE_TEXT_FILES["test"]).is_file():
            return _read_release_folder(path, root)
    if any((path / name).is_file() for name in (*NAMES_FILES, *INDEX_FILES.values())) or (path / CAPTION_DIR).is_dir():
        return _read_cub_200_2011(path)
    raise CUBError(
        f"{path}: neither CUB form: expected the release ({RELEASE_FOLDER}/ or cub.zip with train/, test/, "
        f"{RELEASE_TEXT_FILES['train']}, {RELEASE_TEXT_FILES['test']}) or CUB_200_2011 as MMVM reads it "
        f"({IMAGE_DIR}/, {CAPTION_DIR}/, {NAMES_FILES[0]} or {NAMES_FILES[1]}, {INDEX_FILES['train']}, "
        f"{INDEX_FILES['test']})")


def merge_colours(colours: np.ndarray) -> np.ndarray:
    """``[n, 15]`` primary colours (0/1) -> uint8 ``[n, 6]`` multi-hot colour groups (max per group)."""
    colours = np.asarray(colours)
    if colours.ndim != 2 or colours.shape[1] != len(PRIMARY_COLOURS):
        raise ValueError(f"expected [n, {len(PRIMARY_COLOURS)}] primary colours, got shape {list(colours.shape)}")
    groups = np.zeros((len(colours), len(COLOUR_GROUPS)), dtype=np.uint8)
    for column, members in enumerate(COLOUR_GROUPS.values()):
        indices = [PRIMARY_COLOURS.index(colour) for colour in members]
        groups[:, column] = colours[:, indices].max(axis=1) if len(colours) else 0
    return groups


# ---------------------------------------------------------------- the release form


def _read_release_folder(path: Path, root: Path) -> CUBSource:
    splits = {}
    for split in SPLITS:
        text_path = root / RELEASE_TEXT_FILES[split]
        image_dir = root / RELEASE_IMAGE_DIRS[split]
        if not image_dir.is_dir():
            raise CUBError(f"{image_dir}: missing image folder (the release has train/ and test/ class folders)")
        names = _image_folder_listing(image_dir, _walk_folder(image_dir))
        splits[split] = _pair_release(split, text_path, _numbered_lines(text_path, _read_file(text_path)), names)
    return CUBSource(path, "release", splits, str(root), dict(RELEASE_IMAGE_DIRS),
                     tuple(RELEASE_TEXT_FILES.values()), root)


def _read_release_zip(path: Path) -> CUBSource:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CUBError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        sizes = {info.filename: info.file_size for info in infos}
        text_members = [name for name in sizes if PurePosixPath(name).name == RELEASE_TEXT_FILES["train"]]
        if not text_members:
            raise CUBError(f"{path}: no {RELEASE_TEXT_FILES['train']} in the archive (expected the release cub.zip)")
        prefix = str(PurePosixPath(sorted(text_members, key=len)[0]).parent)
        prefix = "" if prefix == "." else prefix
        splits = {}
        for split in SPLITS:
            member = f"{prefix}/{RELEASE_TEXT_FILES[split]}" if prefix else RELEASE_TEXT_FILES[split]
            where = f"{path}:{member}"
            if member not in sizes:
                raise CUBError(f"{where}: missing file (the release has {', '.join(RELEASE_TEXT_FILES.values())})")
            folder = f"{prefix}/{RELEASE_IMAGE_DIRS[split]}" if prefix else RELEASE_IMAGE_DIRS[split]
            walk: dict[str, list[str]] = {}
            for name in sizes:
                if name.startswith(folder + "/"):
                    relative = PurePosixPath(name[len(folder) + 1:])
                    walk.setdefault(str(relative.parent), []).append(relative.name)
            if not walk:
                raise CUBError(f"{path}:{folder}/: missing image folder (the release has train/ and test/)")
            names = _image_folder_listing(f"{path}:{folder}", walk)
            lines = _numbered_lines(where, archive.read(member))
            splits[split] = _pair_release(split, where, lines, names)
    return CUBSource(path, "release", splits, prefix, dict(RELEASE_IMAGE_DIRS), tuple(RELEASE_TEXT_FILES.values()),
                     Path(prefix or "."), archive=path, _archive_sizes=sizes)


def _walk_folder(folder: Path) -> dict[str, list[str]]:
    """``{relative dir: file names}`` under ``folder`` (following links, as ImageFolder does)."""
    walk: dict[str, list[str]] = {}
    for directory, _, files in os.walk(folder, followlinks=True):
        walk[os.path.relpath(directory, folder).replace(os.sep, "/")] = list(files)
    return walk


def _image_folder_listing(where, walk: dict[str, list[str]]) -> list[str]:
    """``<class>/<file>`` in ``ImageFolder`` order: classes sorted; within a class, directories
    sorted (``sorted(os.walk(...))``) and file names sorted; only image extensions."""
    classes = sorted({PurePosixPath(d).parts[0] for d in walk if d != "."})
    if not classes:
        raise CUBError(f"{where}: no class folders (ImageFolder layout: <class>/<image>.jpg)")
    names: list[str] = []
    for class_name in classes:
        directories = sorted(d for d in walk if d == class_name or d.startswith(class_name + "/"))
        found = [f"{d}/{f}" for d in directories for f in sorted(walk[d]) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise CUBError(f"{where}/{class_name}: class folder without images (ImageFolder refuses it)")
        names.extend(found)
    return names


def _pair_release(split: str, text_path, lines: list[tuple[int, str]], names: list[str]) -> CUBSplit:
    """Caption line ``k`` -> image ``k // 10``; the line count must be exactly 10 per image."""
    needed = CAPTIONS_PER_IMAGE * len(names)
    captions = []
    for number, text in lines:
        if not text.strip():
            if number > len(lines) - _trailing_blank(lines):
                break  # blank lines at the very end list nothing
            raise CUBError(f"{text_path}:{number}: empty caption (one caption per line, {CAPTIONS_PER_IMAGE} per "
                           "image; a blank line would shift the pairing of every later caption)")
        captions.append(text.strip())
    if len(captions) != needed:
        line = min(len(captions), needed) + 1
        raise CUBError(f"{text_path}:{line}: {len(captions)} captions for the {len(names)} images of "
                       f"{RELEASE_IMAGE_DIRS[split]}/, expected {CAPTIONS_PER_IMAGE} per image ({needed})")
    return CUBSplit(
        split, tuple(names),
        tuple(tuple(captions[i:i + CAPTIONS_PER_IMAGE]) for i in range(0, needed, CAPTIONS_PER_IMAGE)),
        tuple(f"{text_path}:{i + 1}" for i in range(0, needed, CAPTIONS_PER_IMAGE)),
    )


def _trailing_blank(lines: list[tuple[int, str]]) -> int:
    count = 0
    for _, text in reversed(lines):
        if text.strip():
            break
        count += 1
    return count


# ---------------------------------------------------------------- the CUB_200_2011 form


def _read_cub_200_2011(root: Path) -> CUBSource:
    names_path = next((root / name for name in NAMES_FILES if (root / name).is_file()), None)
    if names_path is None:
        raise CUBError(f"{root / NAMES_FILES[0]}: missing file (MMVM reads {NAMES_FILES[0]}; CUB_200_2011's "
                       f"{NAMES_FILES[1]} has the same format)")
    names = _read_names(names_path)
    caption_root = root / CAPTION_DIR
    if not caption_root.is_dir():
        raise CUBError(f"{caption_root}: missing caption folder (captions/<class>/<image>.txt, 10 lines each)")

    seen: dict[int, tuple[str, int]] = {}
    chosen: dict[str, list[tuple[int, int]]] = {}
    for split in SPLITS:
        chosen[split] = _read_indices(root / INDEX_FILES[split], len(names), seen, split)

    label_file, colour_rows = None, None
    if (root / ATTRIBUTES_FILE).is_file():
        label_file = ATTRIBUTES_FILE
        colour_rows = _read_attribute_labels(root / ATTRIBUTES_FILE, len(names))
    elif (root / MMVM_LABELS_FILE).is_file():
        label_file = MMVM_LABELS_FILE
        colour_rows = _read_dense_labels(root / MMVM_LABELS_FILE, len(names))

    splits = {}
    for split in SPLITS:
        image_names, captions, listed_at, rows = [], [], [], []
        for index, line in chosen[split]:
            name, names_line = names[index]
            caption_path = caption_root / PurePosixPath(name).with_suffix(".txt")
            captions.append(_read_caption_file(caption_path, f"{root / INDEX_FILES[split]}:{line}"))
            image_names.append(name)
            listed_at.append(f"{root / INDEX_FILES[split]}:{line}")
            if colour_rows is not None:
                if colour_rows[index] is None:
                    raise CUBError(f"{root / label_file}: no has_primary_color attributes for image id {index + 1} "
                                   f"({name}, listed at {names_path}:{names_line})")
                rows.append(colour_rows[index])
        colours = None if colour_rows is None else np.array(rows, dtype=np.uint8).reshape(len(rows), 15)
        splits[split] = CUBSplit(split, tuple(image_names), tuple(captions), tuple(listed_at), colours)
    files = [names_path.name, *INDEX_FILES.values()] + ([label_file] if label_file else [])
    return CUBSource(root, "cub_200_2011", splits, str(root / IMAGE_DIR), {split: "" for split in SPLITS},
                     tuple(files), root, label_file=label_file)


def _read_names(path: Path) -> list[tuple[str, int]]:
    """``[(<class>/<file>, line)]`` indexed by image id - 1; ids must be 1..N, each once."""
    by_id: dict[int, tuple[str, int]] = {}
    for number, text in _numbered_lines(path, _read_file(path)):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise CUBError(f"{path}:{number}: expected '<image id> <class>/<image>.jpg', found {_excerpt(text)}")
        image_id = _parse_int(path, number, fields[0], "image id")
        name = fields[1]
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or len(parts) < 2:
            raise CUBError(f"{path}:{number}: {name!r} is not a relative '<class>/<image>' path")
        if image_id in by_id:
            raise CUBError(f"{path}:{number}: image id {image_id} is listed again (first at line {by_id[image_id][1]})")
        by_id[image_id] = (name, number)
    if not by_id:
        raise CUBError(f"{path}:1: empty file, expected '<image id> <class>/<image>.jpg' lines")
    for expected in range(1, len(by_id) + 1):
        if expected not in by_id:
            raise CUBError(f"{path}: image ids are not 1..{len(by_id)}: {expected} is missing")
    return [by_id[i] for i in range(1, len(by_id) + 1)]


def _read_indices(path: Path, count: int, seen: dict[int, tuple[str, int]], split: str) -> list[tuple[int, int]]:
    """``[(image index, line)]`` of one index list (indices from 0, MMVM's ``int(line.strip())``)."""
    chosen = []
    for number, text in _numbered_lines(path, _read_file(path)):
        if not text.strip():
            continue
        fields = text.split()
        if len(fields) != 1:
            raise CUBError(f"{path}:{number}: expected one image index, found {_excerpt(text)}")
        index = _parse_int(path, number, fields[0], "image index")
        if not 0 <= index < count:
            raise CUBError(f"{path}:{number}: image index {index} is outside 0..{count - 1} (index = image id - 1)")
        if index in seen:
            other, line = seen[index]
            raise CUBError(f"{path}:{number}: image index {index} is listed again (first in the {other} list, "
                           f"line {line})")
        seen[index] = (split, number)
        chosen.append((index, number))
    if not chosen:
        raise CUBError(f"{path}:1: no image index (the {split} split would be empty)")
    return chosen


def _read_caption_file(path: Path, listed_at: str) -> tuple[str, ...]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CUBError(f"{path}: missing caption file (image listed at {listed_at})") from None
    except OSError as exc:
        raise CUBError(f"{path}: cannot read ({exc.strerror}; image listed at {listed_at})") from None
    lines = _numbered_lines(path, data)
    kept = len(lines) - _trailing_blank(lines)
    captions = []
    for number, text in lines[:kept]:
        if not text.strip():
            raise CUBError(f"{path}:{number}: empty caption ({CAPTIONS_PER_IMAGE} lines, one caption each)")
        captions.append(text.strip())
    if len(captions) != CAPTIONS_PER_IMAGE:
        line = min(len(captions), CAPTIONS_PER_IMAGE) + 1
        raise CUBError(f"{path}:{line}: {len(captions)} captions, expected {CAPTIONS_PER_IMAGE} (image listed at "
                       f"{listed_at})")
    return tuple(captions)


def _read_attribute_labels(path: Path, count: int) -> list[np.ndarray | None]:
    """The 15 primary colours per image id from CUB's sparse attribute file (all lines checked)."""
    last_colour = FIRST_COLOUR_ATTRIBUTE + len(PRIMARY_COLOURS) - 1
    rows: list[np.ndarray | None] = [None] * count
    filled = np.zeros((count, len(PRIMARY_COLOURS)), dtype=bool)
    for number, text in _numbered_lines(path, _read_file(path)):
        fields = text.split()
        if not fields:
            continue
        if len(fields) not in (5, 6):
            raise CUBError(f"{path}:{number}: expected '<image id> <attribute id> <is_present> <certainty id> "
                           f"<time>', found {_excerpt(text)}")
        image_id = _parse_int(path, number, fields[0], "image id")
        attribute = _parse_int(path, number, fields[1], "attribute id")
        if not 1 <= image_id <= count:
            raise CUBError(f"{path}:{number}: image id {image_id} is not in the name list (ids 1..{count})")
        if not 1 <= attribute <= NUM_ATTRIBUTES:
            raise CUBError(f"{path}:{number}: attribute id {attribute} is outside 1..{NUM_ATTRIBUTES}")
        if fields[2] not in ("0", "1"):
            raise CUBError(f"{path}:{number}: is_present is {fields[2]!r}, expected 0 or 1")
        if FIRST_COLOUR_ATTRIBUTE <= attribute <= last_colour:
            row = rows[image_id - 1]
            if row is None:
                row = rows[image_id - 1] = np.zeros(len(PRIMARY_COLOURS), dtype=np.uint8)
            column = attribute - FIRST_COLOUR_ATTRIBUTE
            if filled[image_id - 1, column]:
                raise CUBError(f"{path}:{number}: attribute {attribute} of image {image_id} is given twice")
            filled[image_id - 1, column] = True
            row[column] = int(fields[2])
    for index, row in enumerate(rows):
        if row is not None and not filled[index].all():
            missing = FIRST_COLOUR_ATTRIBUTE + int(np.flatnonzero(~filled[index])[0])
            raise CUBError(f"{path}: image id {index + 1} lacks attribute {missing} (has_primary_color::"
                           f"{PRIMARY_COLOURS[missing - FIRST_COLOUR_ATTRIBUTE]})")
    return rows


def _read_dense_labels(path: Path, count: int) -> list[np.ndarray | None]:
    """MMVM's ``labels.txt``: row ``r`` (non-blank line ``r + 1``) holds image id ``r + 1``."""
    first = FIRST_COLOUR_ATTRIBUTE - 1
    rows: list[np.ndarray | None] = []
    for number, text in _numbered_lines(path, _read_file(path)):
        fields = text.split()
        if not fields:
            continue
        if len(fields) < first + len(PRIMARY_COLOURS):
            raise CUBError(f"{path}:{number}: {len(fields)} columns, expected at least "
                           f"{first + len(PRIMARY_COLOURS)} (MMVM reads columns {first}:{first + 15})")
        values = fields[first:first + len(PRIMARY_COLOURS)]
        bad = next((v for v in values if v not in ("0", "1")), None)
        if bad is not None:
            raise CUBError(f"{path}:{number}: has_primary_color value {bad!r}, expected 0 or 1")
        rows.append(np.array([int(v) for v in values], dtype=np.uint8))
    if len(rows) != count:
        raise CUBError(f"{path}: {len(rows)} rows, the name list has {count} images (one row per image id)")
    return rows


# ---------------------------------------------------------------- plain text


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CUBError(f"{path}: missing file") from None
    except OSError as exc:
        raise CUBError(f"{path}: cannot read ({exc.strerror})") from None


def _numbered_lines(where, data: bytes) -> list[tuple[int, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CUBError(f"{where}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    # Only \n (with a \r before it) ends a line: str.splitlines would also split at \x0b, \x1c,
    # \u2028 ..., which a caption might contain, and so shift the pairing.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start another
    return [(number, line.removesuffix("\r")) for number, line in enumerate(lines, start=1)]


def _parse_int(path, line: int, text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise CUBError(f"{path}:{line}: {what} {text!r} is not a non-negative integer")
    return int(text)


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
