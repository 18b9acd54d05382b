"""The image modality of CUB: a bird photo as the MMVAE/MMVM models see it, 64x64.

Both references resize the whole image, without cropping and without keeping the aspect ratio:
mmvae ``vae_cub_image.py`` and MultiVae ``CUB`` use ``transforms.Resize([64, 64])``, mmvmvae
``CUBDataset`` ``transforms.Resize((64, 64))``, each after ``ImageFolder``'s / ``Image.open``'s
``convert('RGB')``. On a PIL image torchvision's ``Resize`` is PIL's bilinear ``resize`` (PIL
always filters over the whole source footprint, i.e. antialiased), so that is what is done here;
``ToTensor``'s ``/255`` is the readers' conversion of the stored uint8 ``[3, 64, 64]``.

The functions run in the builder's worker processes; the module imports only numpy, PIL and
the source module. Images inside ``cub.zip`` are read from the archive, opened once per process.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.cub.source import CUBError

IMAGE_SIZE = 64
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
RESAMPLE = Image.Resampling.BILINEAR

_ARCHIVES: dict[str, zipfile.ZipFile] = {}


def preprocess(image: Image.Image) -> np.ndarray:
    """Resize one decoded image to 64x64 (bilinear); uint8 ``[3, 64, 64]`` (channels first)."""
    resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
    return np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1))


def load_image(location: str, listed_at: str, archive: str | None = None) -> np.ndarray:
    """Decode and preprocess one image: the file ``location``, or that member of the zip ``archive``."""
    where = location if archive is None else f"{archive}:{location}"
    try:
        if archive is None:
            with Image.open(location) as image:
                return preprocess(image)
        data = _archive(archive).read(location)
        with Image.open(io.BytesIO(data)) as image:
            return preprocess(image)
    except (FileNotFoundError, KeyError):
        raise CUBError(f"{where}: missing image file (listed at {listed_at})") from None
    except (UnidentifiedImageError, OSError, zipfile.BadZipFile) as exc:
        # PIL reports truncated or corrupt JPEG data as OSError.
        raise CUBError(f"{where}: not a readable image ({exc}; listed at {listed_at})") from None


def load_images(tasks: Sequence[tuple[str, str, str | None]]) -> list[np.ndarray]:
    """``load_image`` over ``(location, listed_at, archive)`` triples: one task of the builder's pool."""
    return [load_image(location, listed_at, archive) for location, listed_at, archive in tasks]


def _archive(path: str) -> zipfile.ZipFile:
    archive = _ARCHIVES.get(path)
    if archive is None:
        archive = _ARCHIVES[path] = zipfile.ZipFile(path)
    return archive
