"""The text modality of bimodal CelebA: attribute names as a 256-character string (MoPoE/mmJSD).

Published recipe (mmJSD ``preprocessing/mainPreprocessLabelsToTextCelebA.py``, read by MoPoE's
``CelebaDataset``): the names of the attributes that are 1, in the column order of
``list_attr_celeba.txt``, joined by ``", "``; while the string is longer than 256 characters
the last attribute is dropped; then ``_`` becomes a space and everything is lowercased. The
string is padded with ``*`` to 256 characters, either on the right, or (as published) on
both sides from a random start offset. The characters are ids over MoPoE's ``alphabet.json``.

What differs from the published script, on purpose:

- The offset comes from a numpy Generator seeded by ``(seed, image file name)`` alone, so it
  is reproducible and independent of file order, of ``limit`` and of the number of build
  workers; the published one drew from numpy's global state.
- The offset is uniform over every position that fits, ``[0, 256 - len]``. The published
  script drew from ``[0, 254 - len]`` (``randint``'s exclusive bound minus one more) and
  kept strings of 255 or 256 characters at 0; neither is a property worth copying.
- A character outside the alphabet is an error. MoPoE's one-hot encoder silently gave it an
  all-zero row; here the ids are stored, and a row of zeros has no id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from data_pipelines.words import checked_ids

ALPHABET: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n")
"""MoPoE's ``alphabet.json`` (thomassutter/MoPoE, also in mmjsd), in its order: 71 entries.

``-`` is listed twice (positions 36 and 59). MoPoE joins the list into a string and encodes
with ``str.find``, so a character's id is its first position and id 59 is never produced;
the duplicate is kept so that ids and the one-hot width (71) match the published models."""

PAD = "*"
SEQUENCE_LENGTH = 256
SEPARATOR = ", "
TEXT_OFFSETS = ("none", "random")
"""``none``: the text starts at position 0; ``random``: at a seeded random position (published)."""

_UNKNOWN = 255
_ID_OF_BYTE = np.full(256, _UNKNOWN, dtype=np.uint8)
for _id in reversed(range(len(ALPHABET))):  # reversed: the first occurrence's id wins
    _ID_OF_BYTE[ord(ALPHABET[_id])] = _id
del _id


def _unknown_character(text: str) -> str | None:
    """The first character of ``text`` that has no id, or None (vectorized: called per image)."""
    if text.isascii() and (_ID_OF_BYTE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)] != _UNKNOWN).all():
        return None
    return next(char for char in text if not char.isascii() or _ID_OF_BYTE[ord(char)] == _UNKNOWN)


def attribute_text(names: Sequence[str], present: Sequence[bool], max_length: int = SEQUENCE_LENGTH) -> str:
    """The attribute sentence of one image (without padding): at most ``max_length`` characters."""
    if len(names) != len(present):
        raise ValueError(f"{len(present)} attribute values for {len(names)} attribute names")
    chosen = [name for name, is_present in zip(names, present) if is_present]
    # Dropping from the end keeps the published column-order priority. The length is measured
    # before the '_' -> ' ' replacement and lowercasing, which do not change it.
    while len(SEPARATOR.join(chosen)) > max_length:
        chosen.pop()
    return SEPARATOR.join(chosen).replace("_", " ").lower()


def encode_text(text: str, offset: int = 0, length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """``text`` at ``offset`` in a ``*``-padded sequence of ``length``, as uint8 alphabet ids."""
    if not 0 <= offset <= length - len(text):
        raise ValueError(f"a text of {len(text)} characters does not fit at offset {offset} of {length}")
    unknown = _unknown_character(text)
    if unknown is not None:
        raise ValueError(f"character {unknown!r} of {text!r} is not in the MoPoE alphabet")
    padded = PAD * offset + text + PAD * (length - offset - len(text))
    return _ID_OF_BYTE[np.frombuffer(padded.encode("ascii"), dtype=np.uint8)]


def random_offset(seed: int, image_name: str, text_length: int, length: int = SEQUENCE_LENGTH) -> int:
    """The seeded start position of one image's text, uniform over ``[0, length - text_length]``.

    The Generator is seeded by a hash of (seed, image name) only, so every image gets the same
    offset whatever order, subset or number of worker processes the build uses.
    """
    if not 0 <= text_length <= length:
        raise ValueError(f"text length {text_length} is not in [0, {length}]")
    digest = hashlib.sha256(f"celeba-text-offset\0{seed}\0{image_name}".encode()).digest()
    generator = np.random.default_rng(int.from_bytes(digest, "little"))
    return int(generator.integers(0, length - text_length, endpoint=True))


def decode_text(ids, vocabulary: Sequence[str]) -> str:
    """The string of a sequence of ids (stored, or generated by a model), ``*`` padding stripped.

    ``ids`` is anything numpy can read as a 1-d integer array (a CPU tensor included).
    Padding is stripped at both ends only: a ``*`` a model generates mid-text is kept.
    """
    ids = checked_ids(ids, vocabulary)
    return "".join(vocabulary[i] for i in ids.tolist()).strip(PAD)


class AttributeTextEncoder:
    """Attribute values of an image -> its stored text ids; checks the attribute names once.

    Every name (after ``_`` -> space and lowercasing) must be spelled in the alphabet, so a
    malformed name fails here, naming the attribute, before any image is encoded.
    """

    def __init__(self, attribute_names: Sequence[str], text_offset: str = "random", seed: int = 0,
                 length: int = SEQUENCE_LENGTH):
        if text_offset not in TEXT_OFFSETS:
            raise ValueError(f"text_offset is {text_offset!r}, expected one of {list(TEXT_OFFSETS)}")
        for name in attribute_names:
            unknown = _unknown_character(name.replace("_", " ").lower())
            if unknown is not None:
                raise ValueError(f"attribute {name!r} has the character {unknown!r}, which the MoPoE "
                                 "alphabet cannot encode")
        self.attribute_names = tuple(attribute_names)
        self.text_offset = text_offset
        self.seed = int(seed)
        self.length = length

    def text(self, present: Sequence[bool]) -> str:
        return attribute_text(self.attribute_names, present, self.length)

    def encode(self, image_name: str, present: Sequence[bool]) -> np.ndarray:
        """uint8 ids of shape ``(length,)`` for the image named ``image_name``."""
        text = self.text(present)
        offset = random_offset(self.seed, image_name, len(text), self.length) if self.text_offset == "random" else 0
        return encode_text(text, offset, self.length)
