"""The text modality of CUB: word tokens of a caption as ids over the train split's vocabulary.

Published recipe (iffsid/mmvae ``CUBSentences``, copied by MultiVae and by mmvmvae's ``CUBDataset``),
with the dataset-independent parts in ``data_pipelines.words`` (the download-free reproduction of
nltk's ``word_tokenize``, the vocabulary rule, the encoding, and where they differ from nltk):

- tokens: nltk ``word_tokenize``, **no lowercasing** (the released captions are lower case already);
- vocabulary: ``<exc>`` (unknown), ``<pad>``, ``<eos>`` (ids 0, 1, 2), then every word that occurs
  **more than 3 times** in the train split's captions, in order of first occurrence; mmvae's CUB
  vocabulary has 1590 entries;
- a caption: its first 31 tokens, then ``<eos>``, then ``<pad>`` up to 32; unknown words -> ``<exc>``.

The released captions are ASCII, where the tokenizer's rules follow nltk's. Ids are ``uint16``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.words import (
    ABBREVIATIONS,
    EOS,
    EOS_ID,
    EXC,
    EXC_ID,
    MIN_COUNT,
    PAD,
    PAD_ID,
    SPECIAL_TOKENS,
    TEXT_DTYPE,
    WordEncoder,
    build_vocabulary,
    decode_text,
    split_sentences,
    word_tokenize,
)
from data_pipelines import words

__all__ = [
    "ABBREVIATIONS", "EOS", "EOS_ID", "EXC", "EXC_ID", "LOWERCASE", "MIN_COUNT", "PAD", "PAD_ID", "SEQUENCE_LENGTH",
    "SPECIAL_TOKENS", "TEXT_DTYPE", "CaptionEncoder", "build_vocabulary", "decode_text", "encode_tokens",
    "split_sentences", "word_tokenize",
]
"""CUB's public text names; the shared ones are re-exported from ``data_pipelines.words``."""

SEQUENCE_LENGTH = 32
"""31 tokens + ``<eos>``, ``<pad>`` fill (mmvae's ``max_sequence_length``)."""
LOWERCASE = False


def encode_tokens(tokens: Sequence[str], id_of: dict[str, int], length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """The first ``length - 1`` tokens, ``<eos>``, ``<pad>`` fill, as ``uint16`` ids (unknown -> ``<exc>``)."""
    return words.encode_tokens(tokens, id_of, length)


class CaptionEncoder(WordEncoder):
    """Caption text -> its stored ids over one vocabulary (32 ids, tokens as they are)."""

    def __init__(self, vocabulary: Sequence[str], length: int = SEQUENCE_LENGTH):
        super().__init__(vocabulary, length, lowercase=LOWERCASE)
