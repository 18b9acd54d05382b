"""The official CelebA files: their layout, and reading them with every line checked.

Layout of a CelebA download (the "Align&Cropped" images and the annotation text files)::

    img_align_celeba/000001.jpg ...     178x218 RGB JPEGs
    list_attr_celeba.txt                line 1: image count; line 2: the 40 attribute names;
                                        then ``<file> <40 values of 1/-1>``, any whitespace
    list_eval_partition.txt             ``<file> <0|1|2>`` (train / validation / test)

``read_source`` reads and cross-checks both text files completely before anything is built,
so a damaged download fails in a second, not after an hour of decoding. Every error is a
``CelebAError`` with a one-line message naming the file and the line (``path:line: ...``).
This module knows the format only; what becomes a split, the text and the images is the
builder's business. It imports nothing beyond numpy so that the fixture writer can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_DIR = "img_align_celeba"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITIONS_FILE = "list_eval_partition.txt"

IMAGE_WIDTH = 178
IMAGE_HEIGHT = 218

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""Line 2 of the official ``list_attr_celeba.txt``, in its order (also MoPoE's ``LABELS``).

The reader takes the names from the file itself; this tuple is what the fixture writes."""

PARTITIONS = {0: "train", 1: "validation", 2: "test"}
"""The official partition values. MoPoE and mmvmvae train on 0 and report "test" on 1."""

_ATTRIBUTE_VALUES = {"1": True, "-1": False}


class CelebAError(ValueError):
    """Unusable CelebA input; the one-line message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class CelebASource:
    """Both annotation files of one CelebA folder, checked and joined, in attribute-file order."""

    root: Path
    attribute_names: tuple[str, ...]
    image_names: tuple[str, ...]
    attributes: np.ndarray
    """bool ``[num_images, num_attributes]``: True where the file says 1."""
    partitions: np.ndarray
    """int8 ``[num_images]``: 0, 1 or 2."""
    attribute_lines: np.ndarray
    """int ``[num_images]``: the line of ``list_attr_celeba.txt`` that lists each image (for messages)."""

    @property
    def attributes_path(self) -> Path:
        return self.root / ATTRIBUTES_FILE

    @property
    def partitions_path(self) -> Path:
        return self.root / PARTITIONS_FILE

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_DIR

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.image_names[index]

    def listed_at(self, index: int) -> str:
        """``path:line`` of the attribute row of image ``index``, for error messages."""
        return f"{self.attributes_path}:{self.attribute_lines[index]}"

    def select(self, partitions: Sequence[int], limit: int | None = None) -> np.ndarray:
        """Indices of the images in any of ``partitions``, in file order, the first ``limit`` of them."""
        chosen = np.flatnonzero(np.isin(self.partitions, list(partitions)))
        return chosen if limit is None else chosen[:limit]

    def image_sizes(self, indices: np.ndarray) -> np.ndarray:
        """Byte size of each selected image file; raises CelebAError naming the first missing one.

        One ``stat`` per image: the existence check before anything is written, and (with the
        names) the cheap fingerprint of the images that goes into the build's identity.
        """
        if not self.image_dir.is_dir():
            raise CelebAError(f"{self.image_dir}: missing image folder (expected the official {IMAGE_DIR}/)")
        sizes = np.empty(len(indices), dtype=np.int64)
        for position, index in enumerate(indices):
            path = self.image_path(index)
            try:
                sizes[position] = path.stat().st_size
            except FileNotFoundError:
                raise CelebAError(f"{path}: missing image file (listed at {self.listed_at(index)})") from None
            except OSError as exc:
                raise CelebAError(f"{path}: cannot read ({exc.strerror}; listed at {self.listed_at(index)})") from None
        return sizes


def read_source(root: str | Path) -> CelebASource:
    """Read, check and join ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` under ``root``.

    The two files must list exactly the same images. Image files themselves are not opened
    here (see ``CelebASource.image_sizes`` and the builder).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CelebAError(f"{root}: not a folder (expected the official CelebA layout: {IMAGE_DIR}/, "
                          f"{ATTRIBUTES_FILE}, {PARTITIONS_FILE})")
    attributes_path, partitions_path = root / ATTRIBUTES_FILE, root / PARTITIONS_FILE
    names, image_names, attributes, lines = _read_attributes(attributes_path)
    partition_of = _read_partitions(partitions_path)

    row_of = {name: row for row, name in enumerate(image_names)}
    for name, (_, line) in partition_of.items():
        if name not in row_of:
            raise CelebAError(f"{partitions_path}:{line}: {name} is not listed in {attributes_path}")
    partitions = np.empty(len(image_names), dtype=np.int8)
    for row, name in enumerate(image_names):
        if name not in partition_of:
            raise CelebAError(f"{attributes_path}:{lines[row]}: {name} is not listed in {partitions_path}")
        partitions[row] = partition_of[name][0]
    return CelebASource(root, names, tuple(image_names), attributes, partitions, lines)


def _read_attributes(path: Path) -> tuple[tuple[str, ...], list[str], np.ndarray, np.ndarray]:
    lines = _numbered_lines(path)
    if not lines:
        raise CelebAError(f"{path}:1: empty file, expected the image count on line 1")
    count_line, count_text = lines[0]
    try:
        announced = int(count_text.strip())
    except ValueError:
        raise CelebAError(f"{path}:{count_line}: expected the image count, found {_excerpt(count_text)}") from None
    if len(lines) < 2:
        raise CelebAError(f"{path}:{count_line + 1}: missing the line of attribute names")
    names_line, names_text = lines[1]
    names = tuple(names_text.split())
    if not names:
        raise CelebAError(f"{path}:{names_line}: expected the attribute names, the line is empty")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CelebAError(f"{path}:{names_line}: attribute {repeated[0]!r} is named twice")

    image_names: list[str] = []
    rows: list[list[bool]] = []
    row_lines: list[int] = []
    first_line_of: dict[str, int] = {}
    for number, text in lines[2:]:
        fields = text.split()
        if not fields:
            continue  # a blank line (e.g. at the end) lists no image
        name, values = fields[0], fields[1:]
        _check_image_name(path, number, name)
        if name in first_line_of:
            raise CelebAError(f"{path}:{number}: {name} is listed again (first at line {first_line_of[name]})")
        if len(values) != len(names):
            raise CelebAError(f"{path}:{number}: {len(values)} values for {name}, expected {len(names)} "
                              f"(one per attribute named on line {names_line})")
        try:
            rows.append([_ATTRIBUTE_VALUES[value] for value in values])
        except KeyError:
            column = next(i for i, value in enumerate(values) if value not in _ATTRIBUTE_VALUES)
            raise CelebAError(f"{path}:{number}: value {values[column]!r} for attribute {names[column]} of "
                              f"{name}, expected 1 or -1") from None
        first_line_of[name] = number
        image_names.append(name)
        row_lines.append(number)
    if announced != len(image_names):
        raise CelebAError(f"{path}:{count_line}: announces {announced} images, the file lists {len(image_names)}")
    attributes = np.array(rows, dtype=bool).reshape(len(rows), len(names))
    return names, image_names, attributes, np.array(row_lines, dtype=np.int64)


def _read_partitions(path: Path) -> dict[str, tuple[int, int]]:
    """``{image name: (partition, line)}``."""
    partition_of: dict[str, tuple[int, int]] = {}
    for number, text in _numbered_lines(path):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise CelebAError(f"{path}:{number}: expected '<file> <partition>', found {_excerpt(text)}")
        name, value = fields
        _check_image_name(path, number, name)
        if value not in ("0", "1", "2"):
            raise CelebAError(f"{path}:{number}: partition {value!r} for {name}, expected 0, 1 or 2 "
                              f"({', '.join(f'{k} {v}' for k, v in PARTITIONS.items())})")
        if name in partition_of:
            raise CelebAError(f"{path}:{number}: {name} is listed again (first at line {partition_of[name][1]})")
        partition_of[name] = (int(value), number)
    if not partition_of:
        raise CelebAError(f"{path}:1: empty file, expected '<file> <partition>' lines")
    return partition_of


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CelebAError(f"{path}: missing file (the official CelebA layout has {IMAGE_DIR}/, "
                          f"{ATTRIBUTES_FILE} and {PARTITIONS_FILE})") from None
    except OSError as exc:
        raise CelebAError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CelebAError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    # splitlines also ends lines at \r, which a Windows-edited copy may carry.
    return list(enumerate(text.splitlines(), start=1))


def _check_image_name(path: Path, line: int, name: str) -> None:
    # Names are joined to img_align_celeba/; anything but a plain file name could point elsewhere.
    if name in (".", "..") or "/" in name or "\\" in name:
        raise CelebAError(f"{path}:{line}: {name!r} is not a plain image file name")


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
