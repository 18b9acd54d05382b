"""Background images for PolyMNIST: one RGB image per modality, from files or made procedurally.

The paper's backgrounds (MoPoE Appendix D.1: a fractal tree, The Scream, Lena, a star
field, shingles) cannot be redistributed with the code, so the offline default is a set of
procedural textures: distinct colours and structures per modality, so a model has something
modality-specific to learn, and random 28x28 crops differ from each other. They use integer
arithmetic and a fixed-seed generator only, so they are the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROCEDURAL_SIZE = 256
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_SIZE = 28


class BackgroundError(ValueError):
    """A background folder or file that cannot be used; the message names it."""


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size]
    return ys.astype(np.int64), xs.astype(np.int64)


def _triangle(values: np.ndarray, period: int) -> np.ndarray:
    """Triangle wave 0..255..0 over ``period`` (integer only, so platform-independent)."""
    phase = values % period
    half = period // 2
    return np.where(phase < half, phase, period - phase) * 255 // half


def _value_noise(size: int, cells: int, seed: int) -> np.ndarray:
    """Smooth noise 0..255: a random integer grid, bilinearly upsampled with integer weights."""
    grid = np.random.default_rng(seed).integers(0, 256, size=(cells + 1, cells + 1), dtype=np.int64)
    ys, xs = _coordinates(size)
    step = size // cells
    y0, x0 = ys // step, xs // step
    wy, wx = ys % step, xs % step
    top = grid[y0, x0] * (step - wx) + grid[y0, x0 + 1] * wx
    bottom = grid[y0 + 1, x0] * (step - wx) + grid[y0 + 1, x0 + 1] * wx
    return (top * (step - wy) + bottom * wy) // (step * step)


def _stripes(size: int) -> np.ndarray:
    ys, xs = _coordinates(size)
    return _triangle(xs + 2 * ys + _value_noise(size, 8, 11) // 8, 28)


def _checker(size: int) -> np.ndarray:
    ys, xs = _coordinates(size)
    squares = ((ys // 19 + xs // 19) % 2) * 170
    return squares + _value_noise(size, 16, 12) // 3


def _rings(size: int) -> np.ndarray:
    ys, xs = _coordinates(size)
    # sqrt is correctly rounded in IEEE 754, so the floor is the same everywhere.
    radius = np.floor(np.sqrt(((ys - size // 3) ** 2 + (xs - size // 2) ** 2).astype(np.float64))).astype(np.int64)
    return _triangle(radius, 22)


def _clouds(size: int) -> np.ndarray:
    return (_value_noise(size, 4, 13) + _value_noise(size, 16, 14) + 2 * _value_noise(size, 32, 15)) // 4


def _stars(size: int) -> np.ndarray:
    rng = np.random.default_rng(16)
    pattern = _value_noise(size, 8, 17) // 4
    ys, xs = rng.integers(0, size, size=(2, size * size // 40))
    pattern[ys, xs] = 255
    return pattern


# (structure, dark colour, light colour): five visibly different textures and palettes.
_RECIPES: tuple[tuple[Callable[[int], np.ndarray], tuple[int, int, int], tuple[int, int, int]], ...] = (
    (_stripes, (20, 40, 120), (250, 170, 40)),
    (_checker, (90, 10, 40), (120, 230, 200)),
    (_rings, (10, 90, 20), (230, 120, 240)),
    (_clouds, (150, 20, 10), (250, 240, 110)),
    (_stars, (5, 5, 30), (230, 230, 255)),
)


def procedural_background(index: int, size: int = PROCEDURAL_SIZE) -> np.ndarray:
    """Texture ``index`` as uint8 ``[size, size, 3]``; beyond five, palettes get channel-rotated."""
    structure, dark, light = _RECIPES[index % len(_RECIPES)]
    rotation = index // len(_RECIPES)
    dark = np.roll(np.array(dark, dtype=np.int64), rotation)
    light = np.roll(np.array(light, dtype=np.int64), rotation)
    weight = np.clip(structure(size), 0, 255)[..., None]
    return ((dark * (255 - weight) + light * weight) // 255).astype(np.uint8)


def procedural_backgrounds(count: int, size: int = PROCEDURAL_SIZE) -> tuple[list[np.ndarray], dict[str, Any]]:
    images = [procedural_background(i, size) for i in range(count)]
    return images, {"source": "procedural", "size": size, "sha256": [_digest(image) for image in images]}


def load_backgrounds(directory: str | Path, count: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The first ``count`` images of ``directory`` in sorted name order (as the original generator)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise BackgroundError(f"{directory}: not a directory of background images")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in BACKGROUND_SUFFIXES and p.is_file())
    if len(files) < count:
        raise BackgroundError(f"{directory}: {len(files)} background images ({[p.name for p in files]}), "
                              f"{count} modalities need one each")
    images = []
    for path in files[:count]:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        except OSError as exc:
            raise BackgroundError(f"{path}: unreadable image: {exc}") from exc
        if array.shape[0] < MIN_SIZE or array.shape[1] < MIN_SIZE:
            raise BackgroundError(f"{path}: {array.shape[1]}x{array.shape[0]} is smaller than a "
                                  f"{MIN_SIZE}x{MIN_SIZE} crop")
        images.append(array)
    return images, {
        "source": "directory",
        "directory": str(directory.resolve()),
        "files": [p.name for p in files[:count]],
        "sha256": [_digest(image) for image in images],
    }


def _digest(image: np.ndarray) -> str:
    """Hash of the decoded pixels (and shape): what the generator actually uses."""
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


# Dark, distinct colours: the generator inverts them where the digit is, so digits stay visible.
_SOLID_COLOURS = ((20, 40, 120), (90, 10, 40), (10, 90, 20), (100, 60, 0), (40, 40, 40))


def write_solid_backgrounds(directory: str | Path, count: int, size: int = 64) -> Path:
    """``count`` flat single-colour PNGs in ``directory``, for ``build_polymnist(backgrounds=...)``.

    PolyMNIST without its modality-specific nuisance: the digit is all a model can encode, which
    is what learning-dynamics checks (benchmarks/latent_emergence.py) need as a control.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = np.roll(np.array(_SOLID_COLOURS[index % len(_SOLID_COLOURS)]), index // len(_SOLID_COLOURS))
        Image.fromarray(np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy()).save(directory / f"{index}.png")
    return directory
