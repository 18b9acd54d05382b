"""Turning what the training loop has (a PIL image, a tensor grid, an array) into a PIL image.

One representation for both sinks: ``aim.Image`` takes PIL directly, and the journal saves
it as PNG. torch is never imported here: a tensor is recognised by its methods, so this
module stays importable (and cheap) where torch is absent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def to_pil(image: Any) -> Image.Image:
    """PIL images pass through; tensors/arrays are CHW or HWC (C in 1, 3, 4) or HW.

    Floats are taken to be in [0, 1] (what ``torchvision.utils.make_grid`` returns for
    model samples) and clipped; integers must already be 0..255.
    """
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):  # torch.Tensor, without importing torch
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.transpose(array, (1, 2, 0))  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape HW, HWC or CHW, got {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0)
    return Image.fromarray(array.astype(np.uint8))
