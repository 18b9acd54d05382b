"""The image modalities of MIMIC-CXR: a chest radiograph as a square grayscale image.

Grayscale (MIMIC-CXR-JPG images are 8-bit grayscale JPEGs already; anything else is converted
by PIL's ``convert("L")``), the centred square of side ``min(width, height)`` (offsets rounded
down), then PIL's antialiased ``LANCZOS`` resize (the filter older Pillow called ``ANTIALIAS``)
to ``size`` x ``size``. Stored as uint8 ``[1, size, size]``.

The crop is done before the resize, not with ``resize(box=...)``: PIL's box resize lets the filter
read pixels outside the box, which changes the border pixels. The JPEG is decoded at full
resolution (no ``draft`` mode), so the pixels do not depend on PIL's DCT scaling.

The functions run in the builder's worker processes; the module imports only numpy, PIL and
the source module, so a spawned worker starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.mimic.source import MIMICError

RESAMPLE = Image.Resampling.LANCZOS


def image_shape(size: int) -> tuple[int, int, int]:
    return (1, size, size)


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of the centred square of side ``min(width, height)``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, centre square, LANCZOS resize; uint8 ``[1, size, size]``."""
    gray = image.convert("L")
    square = gray.crop(centre_square(*gray.size)).resize((size, size), RESAMPLE)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8)[None])


def load_image(path: str | Path, listed_at: str, size: int) -> np.ndarray:
    """Decode and preprocess one image file; errors name the file and the metadata line listing it."""
    try:
        with Image.open(path) as image:
            return preprocess(image, size)
    except FileNotFoundError:
        raise MIMICError(f"{path}: missing image file (listed at {listed_at})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # PIL reports truncated or corrupt JPEG data as OSError.
        raise MIMICError(f"{path}: not a readable image ({exc}; listed at {listed_at})") from None


def load_images(tasks: Sequence[tuple[str, str, int]]) -> list[np.ndarray]:
    """``load_image`` over ``(path, listed_at, size)`` triples: one task of the builder's process pool."""
    return [load_image(path, listed_at, size) for path, listed_at, size in tasks]
