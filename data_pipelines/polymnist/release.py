"""The official PolyMNIST release (Zenodo 4899160, ``PolyMNIST.zip``), zipped or unpacked.

Layout: ``[TOP/]{train,test}/m{0..4}/<i>.<digit>.png`` where ``<i>`` counts within a digit
class and ``<digit>`` is the label (``name.split('.')[-2]``); files with the same name in
m0..m4 form one tuple. The original loaders paired files by ``glob`` order, which is
directory order; here names are sorted and every modality must hold exactly the same names.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.shards import Sample

IMAGE_SHAPE = (3, 28, 28)
NUM_CLASSES = 10
_MODALITY_DIR = re.compile(r"^m(\d+)$")


class ReleaseError(ValueError):
    """A release whose layout or files are not usable; the message names the offending path."""


class _FolderRelease:
    def __init__(self, root: Path):
        self.location = root
        self.root = _single_top(root, lambda p: (p / "train").is_dir() and (p / "test").is_dir(),
                                lambda p: [c for c in p.iterdir() if c.is_dir()])

    def modality_dirs(self, split: str) -> list[str]:
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise ReleaseError(f"{split_dir}: missing split folder")
        return [p.name for p in split_dir.iterdir() if p.is_dir()]

    def names(self, split: str, modality: str) -> list[str]:
        folder = self.root / split / modality
        if not folder.is_dir():
            raise ReleaseError(f"{folder}: missing modality folder")
        return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")

    def read(self, split: str, modality: str, name: str) -> bytes:
        return (self.root / split / modality / name).read_bytes()

    def where(self, split: str, modality: str, name: str | None = None) -> str:
        path = self.root / split / modality
        return str(path / name) if name else str(path)


class _ZipRelease:
    def __init__(self, path: Path):
        self.location = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ReleaseError(f"{path}: not a readable zip: {exc}") from exc
        self.members = {PurePosixPath(info.filename) for info in self.archive.infolist() if not info.is_dir()}
        # The release may be zipped with a top folder (MMNIST/) or without one.
        tops = sorted({m.parts[0] for m in self.members if len(m.parts) > 1})
        for base in [""] + [f"{top}/" for top in tops]:
            if any(str(m).startswith(f"{base}train/") for m in self.members) and any(
                str(m).startswith(f"{base}test/") for m in self.members
            ):
                self.prefix = base
                break
        else:
            raise ReleaseError(f"{path}: no train/ and test/ folders at the top or one level down")

    def _children(self, folder: str) -> dict[str, list[str]]:
        """{subfolder: [file names]} one level below ``folder``, indexed once (a zip has ~700k members)."""
        if not hasattr(self, "_index"):
            self._index: dict[str, dict[str, list[str]]] = {}
            for member in self.members:
                text = str(member)
                if text.startswith(self.prefix):
                    parts = text[len(self.prefix):].split("/")
                    if len(parts) == 3:
                        self._index.setdefault(parts[0], {}).setdefault(parts[1], []).append(parts[2])
        return self._index.get(folder, {})

    def modality_dirs(self, split: str) -> list[str]:
        children = self._children(split)
        if not children:
            raise ReleaseError(f"{self.location}:{self.prefix}{split}: missing split folder")
        return list(children)

    def names(self, split: str, modality: str) -> list[str]:
        files = self._children(split).get(modality)
        if files is None:
            raise ReleaseError(f"{self.where(split, modality)}: missing modality folder")
        return sorted(name for name in files if name.endswith(".png"))

    def read(self, split: str, modality: str, name: str) -> bytes:
        return self.archive.read(f"{self.prefix}{split}/{modality}/{name}")

    def where(self, split: str, modality: str, name: str | None = None) -> str:
        inner = f"{self.prefix}{split}/{modality}" + (f"/{name}" if name else "")
        return f"{self.location}:{inner}"


def _single_top(root: Path, is_release, children) -> Path:
    if is_release(root):
        return root
    candidates = [child for child in children(root) if is_release(child)]
    if len(candidates) == 1:
        return candidates[0]
    raise ReleaseError(f"{root}: no train/ and test/ folders at the top or in one subfolder (like MMNIST/)")


def open_release(path: str | Path):
    path = Path(path).expanduser()
    if path.is_dir():
        return _FolderRelease(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return _ZipRelease(path)
    raise ReleaseError(f"{path}: neither a folder nor a zip file of the PolyMNIST release")


def label_of(name: str, where: str) -> int:
    parts = name.split(".")
    try:
        label = int(parts[-2])
    except (IndexError, ValueError):
        raise ReleaseError(f"{where}: cannot read a digit label from the file name (expected <i>.<digit>.png)") from None
    if not 0 <= label < NUM_CLASSES:
        raise ReleaseError(f"{where}: label {label} outside 0..{NUM_CLASSES - 1}")
    return label


def available_modalities(release, split: str = "train") -> list[str]:
    found = sorted((d for d in release.modality_dirs(split) if _MODALITY_DIR.match(d)),
                   key=lambda d: int(d[1:]))
    if not found:
        raise ReleaseError(f"{release.where(split, '')}: no m<k> modality folders")
    return found


def release_split(release, split: str, modalities: list[str], limit: int | None) -> tuple[int, Iterator[Sample], dict[str, Any]]:
    """Pair files across modalities by name, check the layout, and yield decoded tuples."""
    names = release.names(split, modalities[0])
    if not names:
        raise ReleaseError(f"{release.where(split, modalities[0])}: no .png files")
    for modality in modalities[1:]:
        other = release.names(split, modality)
        if other != names:
            missing = sorted(set(names) - set(other))[:3]
            extra = sorted(set(other) - set(names))[:3]
            raise ReleaseError(
                f"{release.where(split, modality)}: file names differ from {release.where(split, modalities[0])} "
                f"({len(other)} vs {len(names)} files; missing e.g. {missing}, extra e.g. {extra})"
            )
    labels = [label_of(name, release.where(split, modalities[0], name)) for name in names]
    if limit is not None:
        names, labels = names[:limit], labels[:limit]

    def samples() -> Iterator[Sample]:
        for name, label in zip(names, labels):
            arrays = {modality: _decode(release, split, modality, name) for modality in modalities}
            yield Sample(arrays, label)

    return len(names), samples(), {"files_per_modality": len(names)}


def _decode(release, split: str, modality: str, name: str) -> np.ndarray:
    where = release.where(split, modality, name)
    try:
        with Image.open(io.BytesIO(release.read(split, modality, name))) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ReleaseError(f"{where}: unreadable image: {exc}") from exc
    array = array.transpose(2, 0, 1)
    if array.shape != IMAGE_SHAPE:
        raise ReleaseError(f"{where}: image is {list(array.shape)} (CHW), PolyMNIST images are {list(IMAGE_SHAPE)}")
    return np.ascontiguousarray(array)
