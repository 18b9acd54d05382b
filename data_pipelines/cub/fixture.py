"""Small CUB datasets in both exact official layouts, for tests and benchmarks (no download).

``synthetic_birds(num_images, seed)`` draws one set of birds: class folders named like CUB's
(``001.Black_footed_Albatross``), real JPEGs of varying size (about 120-220 x 100-180) showing a
bird whose body, wings and head are painted in its primary colours, 10 one-sentence lower-case
captions per image that name those colours (with commas, an apostrophe, a clitic, a semicolon and
a colon, as the real captions have), and the 312 CUB attributes with the 15 ``has_primary_color``
ones set from the colours. The last quarter of the classes are test classes (class-disjoint, as
in the release). The first image has a caption longer than 31 tokens, and every image one
caption with a word of its own (so ``<exc>`` occurs).

``write_cub_release_fixture`` writes them as the release (``cub/train|test/<class>/<image>.jpg``,
``text_trainvalclasses.txt``, ``text_testclasses.txt``; or ``cub.zip`` holding ``cub/...``), and
``write_cub_200_2011_fixture`` as CUB_200_2011 read by MMVM (``images/``, ``captions/``,
``idx2name.txt`` and ``images.txt``, ``train_idx.txt``, ``test_idx.txt``,
``attributes/image_attribute_labels.txt``, ``labels.txt``): the same image bytes and captions in
the same item order in both, so both build to the same samples.

Everything derives from ``seed``; only numpy and PIL are used.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.cub.source import (
    ATTRIBUTES_FILE,
    CAPTION_DIR,
    FIRST_COLOUR_ATTRIBUTE,
    IMAGE_DIR,
    INDEX_FILES,
    MMVM_LABELS_FILE,
    NAMES_FILES,
    NUM_ATTRIBUTES,
    PRIMARY_COLOURS,
    RELEASE_FOLDER,
    RELEASE_IMAGE_DIRS,
    RELEASE_TEXT_FILES,
)

JPEG_QUALITY = 90
CLASS_NAMES = ("Black_footed_Albatross", "Laysan_Albatross", "Red_winged_Blackbird", "Indigo_Bunting",
               "Northern_Cardinal", "American_Goldfinch", "Gray_Catbird", "White_breasted_Nuthatch")
SPECIES_WORDS = ("albatross", "seabird", "blackbird", "bunting", "cardinal", "goldfinch", "catbird", "nuthatch")

_RGB = {
    "blue": (40, 80, 200), "brown": (120, 80, 40), "iridescent": (60, 160, 170), "purple": (120, 50, 140),
    "rufous": (170, 80, 40), "grey": (140, 140, 145), "yellow": (240, 210, 40), "olive": (120, 120, 50),
    "green": (50, 150, 60), "pink": (240, 150, 180), "orange": (240, 140, 30), "black": (20, 20, 20),
    "white": (245, 245, 245), "red": (210, 30, 30), "buff": (220, 190, 140),
}
_PARTS = ("wings", "crown", "breast", "belly", "back", "tail", "nape", "throat")
_SIZES = ("small", "medium-sized", "large", "tiny")
_BILLS = ("short pointed bill", "long curved beak", "thick conical bill", "small black beak")
_TEMPLATES = (
    "this {size} bird has a {c1} {p1} and a {c2} {p2}.",
    "a {c1} bird with {c2} {p2}, a {bill} and {c3} {p3}.",
    "the bird's {p1} is {c1} while its {p2} is {c2}.",
    "this {species} is mostly {c1} with a {bill}.",
    "a {size} {c1} and {c2} bird, it doesn't have any {c3} on its {p3}.",
    "{c1} {p1}; {c2} {p2}: this bird also has a {bill}.",
    "this bird is {c1} and {c2} in color, with a {bill}.",
    "the {species} has {c1} {p1} and {c2} {p2}.",
    "a bird with a {c2} {p2} and a {c1} {p1}.",
    "this {c1} bird was seen near {place}.",
)


@dataclass(frozen=True)
class SyntheticBird:
    image_id: int
    """CUB's image id: 1-based, in (class folder, file name) order."""
    class_name: str
    file_name: str
    split: str
    jpeg: bytes
    captions: tuple[str, ...]
    attributes: np.ndarray
    """uint8 ``[312]``: is_present of CUB attributes 1..312."""

    @property
    def name(self) -> str:
        return f"{self.class_name}/{self.file_name}"

    @property
    def colours(self) -> np.ndarray:
        start = FIRST_COLOUR_ATTRIBUTE - 1
        return self.attributes[start:start + len(PRIMARY_COLOURS)]


def synthetic_birds(num_images: int = 30, seed: int = 0) -> list[SyntheticBird]:
    """The birds both fixture layouts hold, in image id order (train and test classes interleaved by id)."""
    if num_images < 4:
        raise ValueError(f"num_images must be at least 4 (two classes, train and test), got {num_images}")
    num_classes = min(len(CLASS_NAMES), max(2, num_images // 4))
    num_test_classes = max(1, num_classes // 4)
    image_seeds = np.random.SeedSequence(seed).spawn(num_images)
    drawn = []
    for index, image_seed in enumerate(image_seeds):
        rng = np.random.default_rng(image_seed)
        klass = index % num_classes
        class_name = f"{klass + 1:03d}.{CLASS_NAMES[klass]}"
        file_name = f"{CLASS_NAMES[klass].title()}_{index + 1:04d}_{int(rng.integers(100, 1000))}.jpg"
        colours = list(rng.choice(len(PRIMARY_COLOURS), size=int(rng.integers(1, 4)), replace=False))
        attributes = (rng.random(NUM_ATTRIBUTES) < 0.1).astype(np.uint8)
        attributes[FIRST_COLOUR_ATTRIBUTE - 1:FIRST_COLOUR_ATTRIBUTE - 1 + len(PRIMARY_COLOURS)] = 0
        for colour in colours:
            attributes[FIRST_COLOUR_ATTRIBUTE - 1 + colour] = 1
        names = [PRIMARY_COLOURS[c] for c in colours]
        captions = _captions(rng, names, SPECIES_WORDS[klass], index)
        split = "test" if klass >= num_classes - num_test_classes else "train"
        drawn.append((class_name, file_name, split, _jpeg(rng, names), captions, attributes))
    drawn.sort(key=lambda bird: (bird[0], bird[1]))
    return [SyntheticBird(image_id, *bird) for image_id, bird in enumerate(drawn, start=1)]


def write_cub_release_fixture(root: str | Path, num_images: int = 30, seed: int = 0, as_zip: bool = False) -> Path:
    """Write the release layout under ``root`` and return ``root/cub`` (or ``root/cub.zip`` with ``as_zip``).

    Images in ``ImageFolder`` order, captions 10 per image in that order, one per line.
    """
    root = Path(root)
    birds = synthetic_birds(num_images, seed)
    files: dict[str, bytes] = {}
    for split in RELEASE_TEXT_FILES:
        chosen = [bird for bird in birds if bird.split == split]  # id order = ImageFolder order
        for bird in chosen:
            files[f"{RELEASE_FOLDER}/{RELEASE_IMAGE_DIRS[split]}/{bird.name}"] = bird.jpeg
        files[f"{RELEASE_FOLDER}/{RELEASE_TEXT_FILES[split]}"] = "".join(
            caption + "\n" for bird in chosen for caption in bird.captions).encode()
    if as_zip:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{RELEASE_FOLDER}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(files):
                archive.writestr(zipfile.ZipInfo(name, date_time=(2019, 1, 1, 0, 0, 0)), files[name])
        return path
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / RELEASE_FOLDER


def write_cub_200_2011_fixture(root: str | Path, num_images: int = 30, seed: int = 0, attributes: bool = True,
                               mmvm_labels: bool = True) -> Path:
    """Write CUB_200_2011 as MMVM reads it under ``root`` (created if needed) and return ``root``.

    ``attributes``: write ``attributes/image_attribute_labels.txt`` (CUB's sparse format, one line
    per image and attribute; one line has the extra sixth field some official lines have);
    ``mmvm_labels``: write MMVM's dense ``labels.txt``.
    """
    root = Path(root)
    birds = synthetic_birds(num_images, seed)
    for bird in birds:
        image_path = root / IMAGE_DIR / bird.name
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.write_bytes(bird.jpeg)
        caption_path = root / CAPTION_DIR / Path(bird.name).with_suffix(".txt")
        caption_path.parent.mkdir(parents=True, exist_ok=True)
        caption_path.write_text("".join(caption + "\n" for caption in bird.captions))
    listing = "".join(f"{bird.image_id} {bird.name}\n" for bird in birds)
    for name in NAMES_FILES:
        (root / name).write_text(listing)
    for split, name in INDEX_FILES.items():
        (root / name).write_text("".join(f"{bird.image_id - 1}\n" for bird in birds if bird.split == split))
    if attributes:
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(num_images + 1)[-1])
        lines = []
        for bird in birds:
            for attribute, present in enumerate(bird.attributes.tolist(), start=1):
                line = f"{bird.image_id} {attribute} {present} {int(rng.integers(1, 5))} {rng.uniform(0, 30):.3f}"
                if bird.image_id == 1 and attribute == 2:
                    line = f"{bird.image_id} {attribute} {present} {int(rng.integers(1, 5))} 0 {rng.uniform(0, 30):.3f}"
                lines.append(line + "\n")
        (root / ATTRIBUTES_FILE).parent.mkdir(parents=True, exist_ok=True)
        (root / ATTRIBUTES_FILE).write_text("".join(lines))
    if mmvm_labels:
        (root / MMVM_LABELS_FILE).write_text("".join(" ".join(map(str, bird.attributes.tolist())) + "\n"
                                                     for bird in birds))
    return root


def _captions(rng: np.random.Generator, colours: list[str], species: str, index: int) -> tuple[str, ...]:
    captions = []
    for number, template in enumerate(_TEMPLATES):
        picked = [colours[int(rng.integers(len(colours)))] for _ in range(3)]
        parts = rng.choice(len(_PARTS), size=3, replace=False)
        caption = template.format(
            size=_SIZES[int(rng.integers(len(_SIZES)))], bill=_BILLS[int(rng.integers(len(_BILLS)))],
            c1=colours[0], c2=picked[1], c3=picked[2], p1=_PARTS[parts[0]], p2=_PARTS[parts[1]],
            p3=_PARTS[parts[2]], species=species, place=f"pond{index + 1}")
        if index == 0 and number == 8:  # longer than 31 tokens: truncated to 31 + <eos>
            caption = "this bird has " + ", ".join(f"bright {c} {p}" for c in colours for p in _PARTS) + "."
        captions.append(caption)
    return tuple(captions)


def _jpeg(rng: np.random.Generator, colours: list[str]) -> bytes:
    width, height = int(rng.integers(120, 221)), int(rng.integers(100, 181))
    background = tuple(int(c) for c in rng.integers(60, 160, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    body, wings, head = (_RGB[colours[i % len(colours)]] for i in range(3))
    x, y = width // 2 + int(rng.integers(-10, 11)), height // 2 + int(rng.integers(-8, 9))
    w, h = width // 4, height // 5
    draw.polygon([(x - w, y), (x - w - w // 2, y - h // 2), (x - w - w // 2, y + h // 2)], fill=wings)  # tail
    draw.ellipse([x - w, y - h, x + w, y + h], fill=body)
    draw.ellipse([x - w // 2, y - h // 2, x + w // 3, y + h // 3], fill=wings)
    draw.ellipse([x + w - h // 2, y - h - h // 2, x + w + h // 2, y - h // 2 + h // 3], fill=head)
    draw.polygon([(x + w + h // 2, y - h), (x + w + h, y - h + 4), (x + w + h // 2, y - h + 8)], fill=(30, 30, 30))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 6.0
    pixels = np.clip(np.asarray(image).astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
