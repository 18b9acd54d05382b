"""Word-level text shared by the datasets that store text as word ids (CUB captions, MIMIC-CXR findings).

The published recipe (iffsid/mmvae ``CUBSentences``, which MultiVae, mmvmvae and the MIMIC-CXR
thesis variant follow):

- tokens: nltk ``word_tokenize`` (punkt sentence splitting, then the Treebank-style word tokenizer
  on each sentence); a dataset may lowercase the tokens (``lowercase``);
- vocabulary: ``<exc>`` (unknown), ``<pad>``, ``<eos>`` (ids 0, 1, 2), then every word that occurs
  **more than** ``min_count`` times (``occ > min_occ``, ``min_occ = 3``) in the train split's texts,
  in order of first occurrence (mmvae's ``OrderedCounter``);
- a text of ``length`` ids: its first ``length - 1`` tokens, then ``<eos>``, then ``<pad>`` fill;
  unknown words -> ``<exc>``.

The tokenizer here needs no download: nltk's ``word_tokenize`` loads the punkt model (a data
download) for the sentence step. ``word_tokenize`` below reproduces it with rules:

- sentence ends: after a whitespace-separated token ending in ``?`` or ``!``, or in ``.`` (not
  ``..``), closing quotes/brackets allowed after it, when another token follows. Like punkt, no
  end after a single letter or a number followed by a lower-case word (``a. b``, ``2. the``), nor
  after the few abbreviations in ``ABBREVIATIONS``. **Differs from punkt** where its learned
  abbreviation list and orthographic statistics decide otherwise (e.g. ``etc.`` or ``approx.``
  before a lower-case word: punkt's pickle may or may not list them), which matters only for the
  ``.`` token: in a sentence's middle a period stays attached (``etc.``), at its end it is split off;
- inside a sentence, nltk's ``NLTKWordTokenizer`` rules for ASCII text: the sentence-final period,
  ``,`` and ``:`` (not between digits), ``;@#$%&?!*``, brackets, ``--`` and ``...`` become tokens;
  ``"`` becomes ````` or ``''``; the clitics ``'s 'm 'd 'll 're 've n't`` and a trailing ``'`` are split
  off; ``cannot gonna gotta gimme lemme wanna`` are split in two. **Differs** on typographic
  (non-ASCII) quotes, which nltk also splits off and this keeps in the word.

Lowercasing happens **after** tokenizing (each token is lowercased): the sentence rules read the
case of the word after a period (``2. The`` ends a sentence, ``2. the`` does not), and
lowercasing first would erase that.

Ids are stored as ``uint16``: word vocabularies (a few thousand words) need more than uint8 and
far less than 65,536; half of int32's bytes, and the readers turn text into int64 tensors anyway.
A vocabulary too large for uint16 is refused when it is built.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

EXC, PAD, EOS = "<exc>", "<pad>", "<eos>"
SPECIAL_TOKENS = (EXC, PAD, EOS)
EXC_ID, PAD_ID, EOS_ID = 0, 1, 2
MIN_COUNT = 3
"""A word enters the vocabulary when it occurs more than this often in the train split's texts."""
TEXT_DTYPE = "uint16"
TOKENIZER = "nltk_word_tokenize_rules/1"
"""Names ``word_tokenize``'s rules in the builds' identities; bump it when they change."""

ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "e.g", "i.e"})
"""Period-final words that do not end a sentence (a small part of punkt's English list)."""

_CLOSERS = "\"')]}>"
_TOKEN = re.compile(r"\S+")

# One (pattern, replacement) per NLTKWordTokenizer rule that touches ASCII text, in its order.
_OPENING_QUOTES = (
    (re.compile(r"(`+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'')"), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
)
_FINAL_PERIOD = re.compile(r"""([^.])(\.)([\])}>"']*)\s*$""")
_PUNCTUATION = (
    (_FINAL_PERIOD, r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (_FINAL_PERIOD, r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"\*"), r" \g<0> "),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
)
_CLOSING_QUOTES = (
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
)
_SPLIT_WORDS = tuple(
    re.compile(pattern) for pattern in (
        r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
        r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)",
        r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b",
    )
)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as punkt would cut them (see the module doc for where it differs)."""
    tokens = list(_TOKEN.finditer(text))
    sentences, start = [], 0
    for token, following in zip(tokens, tokens[1:]):
        if _ends_sentence(token.group(), following.group()):
            sentences.append(text[start:token.end()].strip())
            start = token.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _ends_sentence(token: str, following: str) -> bool:
    core = token.rstrip(_CLOSERS)
    if core.endswith(("?", "!")):
        return True
    if not core.endswith(".") or core.endswith(".."):
        return False
    word = core[:-1].lstrip(_CLOSERS + "([{<`").lower()
    if word in ABBREVIATIONS or word.rsplit("-", 1)[-1] in ABBREVIATIONS:
        return False
    initial_or_number = (len(word) == 1 and word.isalpha()) or word.replace(",", "").replace(".", "").isdigit()
    return not (initial_or_number and following[:1].islower())


def _words(sentence: str) -> list[str]:
    """nltk's word tokenizer rules on one sentence."""
    for pattern, replacement in _OPENING_QUOTES + _PUNCTUATION:
        sentence = pattern.sub(replacement, sentence)
    sentence = f" {sentence} "
    for pattern, replacement in _CLOSING_QUOTES:
        sentence = pattern.sub(replacement, sentence)
    for pattern in _SPLIT_WORDS:
        sentence = pattern.sub(r" \1 \2 ", sentence)
    return sentence.split()


def word_tokenize(text: str, lowercase: bool = False) -> list[str]:
    """The word tokens of ``text``, as nltk's ``word_tokenize`` gives them (no download needed),
    each lowercased with ``lowercase``."""
    tokens = [word for sentence in split_sentences(text) for word in _words(sentence)]
    return [token.lower() for token in tokens] if lowercase else tokens


def build_vocabulary(texts: Iterable[Sequence[str]], min_count: int = MIN_COUNT) -> tuple[str, ...]:
    """Special tokens, then words counted more than ``min_count`` times in first-occurrence order.

    ``texts`` are token lists (``word_tokenize`` of each train text, in item order).
    """
    counts: Counter[str] = Counter()  # a dict: keeps first-occurrence order
    for tokens in texts:
        counts.update(tokens)
    vocabulary = SPECIAL_TOKENS + tuple(w for w, n in counts.items() if n > min_count and w not in SPECIAL_TOKENS)
    if len(vocabulary) > np.iinfo(TEXT_DTYPE).max + 1:
        raise ValueError(f"a vocabulary of {len(vocabulary)} words does not fit {TEXT_DTYPE} ids")
    return vocabulary


def encode_tokens(tokens: Sequence[str], id_of: dict[str, int], length: int) -> np.ndarray:
    """The first ``length - 1`` tokens, ``<eos>``, ``<pad>`` fill, as ``uint16`` ids (unknown -> ``<exc>``)."""
    if length < 1:
        raise ValueError(f"a sequence needs room for <eos>: length {length}")
    kept = list(tokens[: length - 1]) + [EOS]
    ids = np.full(length, id_of[PAD], dtype=TEXT_DTYPE)
    ids[: len(kept)] = [id_of.get(token, id_of[EXC]) for token in kept]
    return ids


class WordEncoder:
    """Text -> its stored ids over one vocabulary: ``length`` ids, tokens lowercased with ``lowercase``."""

    def __init__(self, vocabulary: Sequence[str], length: int, lowercase: bool = False):
        if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"the vocabulary must start with {list(SPECIAL_TOKENS)}")
        self.vocabulary = tuple(vocabulary)
        self.id_of = {word: i for i, word in enumerate(self.vocabulary)}
        self.length = length
        self.lowercase = lowercase

    def tokens(self, text: str) -> list[str]:
        return word_tokenize(text, self.lowercase)

    def encode(self, text: str) -> np.ndarray:
        return encode_tokens(self.tokens(text), self.id_of, self.length)



def checked_ids(ids, vocabulary: Sequence[str]) -> np.ndarray:
    """``ids`` (anything numpy reads as a 1-d integer array, a CPU tensor included) as an array,
    after checking that every id indexes ``vocabulary``."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"expected a 1-d sequence of integer ids, got {ids.dtype} of shape {list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocabulary)):
        bad = ids[(ids < 0) | (ids >= len(vocabulary))][0]
        raise ValueError(f"id {int(bad)} is outside the vocabulary of {len(vocabulary)} entries")
    return ids


def decode_text(ids, vocabulary: Sequence[str]) -> str:
    """The words of a sequence of ids (stored, or generated by a model), up to ``<eos>``, without ``<pad>``.

    ``ids`` is anything numpy can read as a 1-d integer array (a CPU tensor included); words
    are joined by single spaces (``<exc>`` is kept: it marks a word outside the vocabulary).
    """
    ids = checked_ids(ids, vocabulary)
    words = []
    for word in (vocabulary[i] for i in ids.tolist()):
        if word == EOS:
            break
        if word != PAD:
            words.append(word)
    return " ".join(words)
