"""A small CelebA in the exact official layout, for tests and benchmarks (no download).

``write_celeba_fixture(root, num_images)`` writes ``img_align_celeba/000001.jpg ...`` (real
178x218 JPEGs), ``list_attr_celeba.txt`` (count, the 40 official attribute names, ``1``/``-1``
rows padded as in the official file) and ``list_eval_partition.txt``, so the real loading code
runs on it unchanged.

The images are cartoon faces whose drawing follows many of the attributes (hair colour, hat,
glasses, smile, lipstick, beard, pale skin, blur, ...), so a small model or classifier can
learn something from them; a few attributes (e.g. ``Attractive``) leave no trace, as some
practically do not in the real data. Attributes are drawn independently with frequencies
spread over [0.05, 0.8]. Image 1 has every attribute and image 2 none, so any fixture
exercises the text truncation (all 40 names do not fit in 256 characters) and the empty text.
Partitions are contiguous blocks like the official ones: about 80% 0, 10% 1, 10% 2, none empty.

Everything derives from ``seed``; image ``i`` depends on ``(seed, i)`` only, so a larger fixture
starts with the images of a smaller one. Only numpy and PIL are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_pipelines.celeba.source import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES_FILE,
    IMAGE_DIR,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    PARTITIONS,
    PARTITIONS_FILE,
)

JPEG_QUALITY = 90

_HAIR_COLOURS = {  # drawn in this order, so the last present one shows
    "Brown_Hair": (110, 70, 40),
    "Black_Hair": (25, 20, 20),
    "Gray_Hair": (165, 165, 170),
    "Blond_Hair": (235, 205, 115),
}


def write_celeba_fixture(root: str | Path, num_images: int = 24, seed: int = 0,
                         partitions: Sequence[int] | None = None) -> Path:
    """Write the fixture under ``root`` (created if needed) and return ``root``.

    ``partitions`` gives each image's partition (0, 1 or 2) instead of the default blocks.
    """
    root = Path(root)
    if num_images < 3:
        raise ValueError(f"num_images must be at least 3 (one per partition), got {num_images}")
    if partitions is None:
        partitions = _default_partitions(num_images)
    partitions = [int(p) for p in partitions]
    if len(partitions) != num_images or any(p not in PARTITIONS for p in partitions):
        raise ValueError(f"partitions must hold {num_images} values out of {sorted(PARTITIONS)}")

    frequency_seed, *image_seeds = np.random.SeedSequence(seed).spawn(num_images + 1)
    frequencies = np.random.default_rng(frequency_seed).uniform(0.05, 0.8, len(ATTRIBUTE_NAMES))
    names = [f"{index + 1:06d}.jpg" for index in range(num_images)]
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (name, image_seed) in enumerate(zip(names, image_seeds)):
        rng = np.random.default_rng(image_seed)
        present = rng.random(len(ATTRIBUTE_NAMES)) < frequencies
        if index < 2:
            present[:] = index == 0
        _draw_face(dict(zip(ATTRIBUTE_NAMES, present.tolist())), rng).save(image_dir / name, quality=JPEG_QUALITY)
        rows.append(name + "".join(f" {1 if value else -1:2d}" for value in present))

    # The official header line ends with a space; rows pad "1" to the width of "-1".
    (root / ATTRIBUTES_FILE).write_text(f"{num_images}\n" + " ".join(ATTRIBUTE_NAMES) + " \n" + "\n".join(rows) + "\n")
    (root / PARTITIONS_FILE).write_text("".join(f"{name} {p}\n" for name, p in zip(names, partitions)))
    return root


def _default_partitions(num_images: int) -> list[int]:
    held_out = max(1, round(0.1 * num_images))
    train = num_images - 2 * held_out
    return [0] * train + [1] * held_out + [2] * held_out


def _draw_face(a: dict[str, bool], rng: np.random.Generator) -> Image.Image:
    """One cartoon face; geometry inside the 148x148 centre crop the builder keeps."""
    image = Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), tuple(int(c) for c in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(image)
    x, y = 89 + int(rng.integers(-3, 4)), 110 + int(rng.integers(-3, 4))
    skin = (238, 214, 200) if a["Pale_Skin"] else (196, 148, 116)
    hair = (90, 60, 40)
    for name, colour in _HAIR_COLOURS.items():
        if a[name]:
            hair = colour
    half_width = 48 if a["Chubby"] else 40
    half_height = 62 if a["Oval_Face"] else 54

    # Shoulders and neck: suit for Male, a colour otherwise.
    draw.rectangle([x - 14, y + 40, x + 14, y + 75], fill=skin)
    draw.ellipse([x - 70, y + 62, x + 70, y + 140], fill=(45, 45, 70) if a["Male"] else (170, 60, 120))
    if a["Wearing_Necktie"]:
        draw.polygon([(x - 6, y + 64), (x + 6, y + 64), (x, y + 100)], fill=(200, 20, 30))
    if a["Wearing_Necklace"]:
        draw.arc([x - 18, y + 50, x + 18, y + 74], 20, 160, fill=(250, 215, 0), width=3)
    # Hair behind the head, sideburns and waves at the sides.
    if not a["Bald"]:
        draw.ellipse([x - half_width - 10, y - half_height - 14, x + half_width + 10, y + 8], fill=hair)
        if a["Straight_Hair"] or a["Wavy_Hair"]:
            for side in (-1, 1):
                left = x + side * (half_width + 4) - 8
                draw.rectangle([left, y - 20, left + 16, y + 45], fill=hair)
                if a["Wavy_Hair"]:
                    for step in range(4):
                        draw.ellipse([left - 4, y - 18 + 16 * step, left + 20, y - 6 + 16 * step], fill=hair)
    draw.ellipse([x - half_width, y - half_height, x + half_width, y + half_height], fill=skin)
    if a["Double_Chin"]:
        draw.arc([x - 24, y + half_height - 16, x + 24, y + half_height + 6], 20, 160, fill=(150, 105, 85), width=3)
    if not a["Bald"]:
        hairline = y - half_height + (4 if a["Receding_Hairline"] else 16)
        draw.chord([x - half_width, y - half_height - 4, x + half_width, hairline + 18], 180, 360, fill=hair)
        if a["Bangs"]:
            draw.rectangle([x - half_width + 6, hairline, x + half_width - 6, hairline + 14], fill=hair)
    if a["Sideburns"]:
        for side in (-1, 1):
            draw.rectangle([x + side * (half_width - 4) - 4, y - 14, x + side * (half_width - 4) + 4, y + 14],
                           fill=hair)

    # Eyes, brows, make-up, glasses.
    eye_y = y - 12
    eye_half_height = 2 if a["Narrow_Eyes"] else 5
    for side in (-1, 1):
        eye_x = x + side * 17
        if a["Heavy_Makeup"]:
            draw.ellipse([eye_x - 11, eye_y - 10, eye_x + 11, eye_y + 4], fill=(120, 60, 150))
        if a["Bags_Under_Eyes"]:
            draw.ellipse([eye_x - 9, eye_y + 3, eye_x + 9, eye_y + 10], fill=(150, 110, 100))
        draw.ellipse([eye_x - 8, eye_y - eye_half_height, eye_x + 8, eye_y + eye_half_height], fill=(35, 25, 25))
        brow_width = 4 if a["Bushy_Eyebrows"] else 2
        if a["Arched_Eyebrows"]:
            draw.arc([eye_x - 11, eye_y - 18, eye_x + 11, eye_y - 4], 200, 340, fill=(50, 35, 30), width=brow_width)
        else:
            draw.line([eye_x - 10, eye_y - 11, eye_x + 10, eye_y - 11], fill=(50, 35, 30), width=brow_width)
        if a["Rosy_Cheeks"]:
            draw.ellipse([eye_x - 8, y + 4, eye_x + 8, y + 16], fill=(225, 95, 105))
        if a["High_Cheekbones"]:
            draw.ellipse([eye_x - 6, y - 2, eye_x + 6, y + 4], fill=(235, 190, 170))
        if a["Wearing_Earrings"]:
            draw.ellipse([x + side * half_width - 4, y + 2, x + side * half_width + 4, y + 10], fill=(250, 215, 0))
    if a["Eyeglasses"]:
        for side in (-1, 1):
            draw.rectangle([x + side * 17 - 12, eye_y - 9, x + side * 17 + 12, eye_y + 9], outline=(10, 10, 10),
                           width=3)
        draw.line([x - 5, eye_y, x + 5, eye_y], fill=(10, 10, 10), width=3)

    # Nose.
    nose_half_width = 9 if a["Big_Nose"] else 5
    nose_length = 20 if a["Pointy_Nose"] else 13
    draw.polygon([(x, y - 4), (x - nose_half_width, y + nose_length - 4), (x + nose_half_width, y + nose_length - 4)],
                 fill=(170, 120, 95))

    # Beard, moustache, stubble, then the mouth on top.
    mouth_y = y + 28
    if not a["No_Beard"]:
        draw.chord([x - half_width, y - 10, x + half_width, y + half_height], 20, 160, fill=(70, 50, 35))
    if a["5_o_Clock_Shadow"]:
        for _ in range(60):
            px, py = x + int(rng.integers(-30, 31)), mouth_y + int(rng.integers(-6, 22))
            draw.point((px, py), fill=(90, 80, 75))
    if a["Goatee"]:
        draw.rectangle([x - 8, mouth_y + 8, x + 8, mouth_y + 24], fill=(60, 40, 25))
    if a["Mustache"]:
        draw.rectangle([x - 14, mouth_y - 7, x + 14, mouth_y - 3], fill=(60, 40, 25))
    lips = (205, 25, 55) if a["Wearing_Lipstick"] else (160, 85, 85)
    mouth_half_width = 16 if a["Smiling"] else 10
    lip_height = 7 if a["Big_Lips"] else 4
    if a["Smiling"]:
        draw.chord([x - mouth_half_width, mouth_y - 8, x + mouth_half_width, mouth_y + lip_height + 2], 0, 180,
                   fill=lips)
    else:
        draw.ellipse([x - mouth_half_width, mouth_y - lip_height // 2, x + mouth_half_width, mouth_y + lip_height // 2],
                     fill=lips)
    if a["Mouth_Slightly_Open"]:
        draw.rectangle([x - mouth_half_width + 5, mouth_y, x + mouth_half_width - 5, mouth_y + 3], fill=(245, 245, 240))

    if a["Wearing_Hat"]:
        draw.rectangle([x - half_width - 14, y - half_height - 16, x + half_width + 14, y - half_height + 14],
                       fill=(30, 60, 160))
        draw.rectangle([x - half_width - 24, y - half_height + 10, x + half_width + 24, y - half_height + 16],
                       fill=(20, 40, 120))

    if a["Blurry"]:
        image = image.filter(ImageFilter.BoxBlur(3))
    # float32 and int16: the benchmarks draw thousands of these.
    noise = rng.standard_normal((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.float32) * (5.0 if a["Young"] else 10.0)
    pixels = np.asarray(image).astype(np.int16) + noise.astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
