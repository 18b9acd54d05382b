"""The image modality of bimodal CelebA: an aligned 178x218 JPEG as MoPoE's models see it.

MoPoE (``celeba/experiment.py``): centre crop 148x148 at offsets ((218-148)//2, (178-148)//2),
i.e. top 35 and left 15, then a PIL bicubic resize to 64x64. MoPoE crops a float tensor and
converts back with ``ToPILImage`` before resizing; that round trip is exact for uint8 values,
so cropping the PIL image directly gives the same pixels. Stored as uint8 ``[3, 64, 64]``.

The crop is done before the resize, not with ``resize(box=...)``: PIL's box resize lets the
filter read pixels outside the box, which changes the border pixels.

The functions here run in the builder's worker processes; the module imports only numpy,
PIL and the source module, so a spawned worker starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.celeba.source import IMAGE_HEIGHT, IMAGE_WIDTH, CelebAError

CROP_SIZE = 148
CROP_TOP = (IMAGE_HEIGHT - CROP_SIZE) // 2
CROP_LEFT = (IMAGE_WIDTH - CROP_SIZE) // 2
CROP_BOX = (CROP_LEFT, CROP_TOP, CROP_LEFT + CROP_SIZE, CROP_TOP + CROP_SIZE)
"""PIL order: (left, top, right, bottom) = (15, 35, 163, 183)."""
IMAGE_SIZE = 64
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
RESAMPLE = Image.Resampling.BICUBIC


def preprocess(image: Image.Image) -> np.ndarray:
    """Crop and resize one decoded 178x218 image; uint8 ``[3, 64, 64]`` (channels first)."""
    resized = image.convert("RGB").crop(CROP_BOX).resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
    return np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1))


def load_image(path: str | Path, listed_at: str) -> np.ndarray:
    """Decode, check and preprocess one image file; errors name the file and the line listing it."""
    try:
        with Image.open(path) as image:
            if image.size != (IMAGE_WIDTH, IMAGE_HEIGHT):
                width, height = image.size
                raise CelebAError(f"{path}: image is {width}x{height}, the aligned CelebA images are "
                                  f"{IMAGE_WIDTH}x{IMAGE_HEIGHT} (listed at {listed_at})")
            return preprocess(image)
    except FileNotFoundError:
        raise CelebAError(f"{path}: missing image file (listed at {listed_at})") from None
    except (UnidentifiedImageError, OSError) as exc:
        # PIL reports truncated or corrupt JPEG data as OSError.
        raise CelebAError(f"{path}: not a readable image ({exc}; listed at {listed_at})") from None


def load_images(tasks: Sequence[tuple[str, str]]) -> list[np.ndarray]:
    """``load_image`` over ``(path, listed_at)`` pairs: one task of the builder's process pool.

    Chunks of images per task keep the pickling and scheduling overhead small next to the
    few milliseconds a JPEG decode takes.
    """
    return [load_image(path, listed_at) for path, listed_at in tasks]
