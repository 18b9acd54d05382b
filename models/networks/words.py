"""Word-level convolutional text networks: word ids (CUB captions, MIMIC-CXR findings) with a
categorical likelihood.

Facts from MMVAE's CUB sentence model (Shi et al. 2019, iffsid/mmvae ``models/vae_cub_sent.py``;
seeds-digest 2.2/6): sentences of 32 word ids (31 words + ``<eos>``, ``<pad>`` fill), a learnt
word embedding of size 128 with the padding word embedded as zeros, a convolutional encoder and
decoder, a categorical likelihood over the vocabulary for every position. MMVM (Sutter et al.
2024, B.6) uses CNN encoders and decoders with ReLU for CUB's captions and a 128-d latent.

Architecture (width ``W`` = ``WIDTH``, embedding ``E`` = ``EMBEDDING_DIM``; every convolution
kernel 4), for a length ``L = 4 * 2^n`` (CUB: 32, n = 3; MIMIC-CXR: 128, n = 5):

* Encoder: ids ``[B, L]`` -> embedding ``[B, E, L]`` (channels = embedding, positions = length)
  -> n Conv1d(s2, p1) halving the length to 4, with W, 2W, 4W, 4W, ... channels, then
  Conv1d(4W->4W, s1, p0) 4->1, each but the last followed by BatchNorm and ReLU -> ``[B, 4W]``
  -> Linear(4W -> 2D) split into ``(mu, logvar)``. CUB: E->W 32->16, W->2W 16->8, 2W->4W 8->4, 4->1.
* Decoder, the mirror: ``z [N, D]`` -> Linear(D -> 4W) as a ``[4W, 1]`` sequence ->
  ConvTranspose1d(s1, p0) 1->4, then n ConvTranspose1d(s2, p1) doubling to L, the channels of the
  encoder in reverse down to E, each but the last followed by BatchNorm and ReLU -> ``[N, L, E]``
  -> Linear(E -> V): logits ``[N, L, V]``.

Departures: MMVAE convolves the ``[32, 128]`` embedded sentence as a one-channel image with 2-D
kernels; here the embedding is the channel axis of 1-D convolutions over the positions (the usual
word CNN: every filter sees whole word vectors, and the cost is a fraction). MMVAE's decoder
projects onto the vocabulary with the transposed embedding (tied weights); the platform builds
encoder and decoder as separate modules (``models.networks``), so the decoder's output layer is
its own Linear(E -> V).
"""

from __future__ import annotations

from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.networks import NetworkEntry, register_networks

EMBEDDING_DIM = 128
"""MMVAE's ``embeddingDim``."""
WIDTH = 128
"""Channels of the first convolution; the bottleneck has 4x as many."""
PAD = "<pad>"
"""The padding word, embedded as zeros (``padding_idx``)."""


def vocabulary_size(spec: ModalitySpec) -> int:
    if not spec.vocabulary:
        raise ValueError(f"text modality {spec.name!r} has no vocabulary")
    return len(spec.vocabulary)


def padding_id(spec: ModalitySpec) -> int | None:
    """Id of ``<pad>`` in the modality's vocabulary, ``None`` if it has none."""
    vocabulary = list(spec.vocabulary or ())
    return vocabulary.index(PAD) if PAD in vocabulary else None


def halvings(length: int) -> int:
    """n with ``length == 4 * 2^n`` (n >= 1): the lengths the convolutions are laid out for."""
    n = (length // 4).bit_length() - 1
    if length < 8 or 4 * 2**n != length:
        raise ValueError(f"word sequences of length 4 * 2^n (8, 16, 32, 64, 128, ...) expected, got {length}")
    return n


def _channels(width: int, embedding_dim: int, n: int) -> list[int]:
    """Encoder channels: E, then W, 2W, 4W, 4W, ... after each halving, then 4W at the bottleneck."""
    return [embedding_dim, *(width * 2 ** min(i, 2) for i in range(n)), 4 * width]


def _conv_stack(channels: list[int], strides_paddings: list[tuple[int, int]], transposed: bool) -> list[nn.Module]:
    conv = nn.ConvTranspose1d if transposed else nn.Conv1d
    layers: list[nn.Module] = []
    for index, ((c_in, c_out), (stride, padding)) in enumerate(zip(zip(channels, channels[1:]), strides_paddings)):
        layers.append(conv(c_in, c_out, 4, stride=stride, padding=padding))
        if index < len(strides_paddings) - 1:
            layers += [nn.BatchNorm1d(c_out), nn.ReLU()]
    return layers


class WordFeatures(nn.Module):
    """Word ids ``[B, L]`` (any integer dtype) -> ``[B, 4W]`` features."""

    def __init__(self, vocabulary_size: int, padding_idx: int | None, length: int, width: int = WIDTH,
                 embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        n = halvings(length)
        self.length = length
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=padding_idx)
        self.convolutions = nn.Sequential(
            *_conv_stack(_channels(width, embedding_dim, n), [(2, 1)] * n + [(1, 0)], transposed=False),  # L -> 4 -> 1
            nn.Flatten(),
        )
        self.num_features = 4 * width

    def forward(self, ids: Tensor) -> Tensor:
        if ids.shape[-1] != self.length:
            raise ValueError(f"word sequences of length {self.length} expected, got {tuple(ids.shape)}")
        return self.convolutions(self.embedding(ids.long()).transpose(1, 2))


class WordEncoder(nn.Module):
    """``ids [B, 32]`` -> ``(mu, logvar)``, each ``[B, D]``."""

    def __init__(self, features: WordFeatures, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.heads = nn.Linear(features.num_features, 2 * latent_dim)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.heads(self.features(ids)).chunk(2, dim=-1)
        return mu, logvar


class WordDecoder(nn.Module):
    """``z [N, D]`` -> word logits ``[N, L, V]`` (the categorical likelihood normalizes them)."""

    def __init__(self, latent_dim: int, vocabulary_size: int, length: int, width: int = WIDTH,
                 embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        n = halvings(length)
        top = 4 * width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, top),
            nn.Unflatten(1, (top, 1)),
            *_conv_stack(_channels(width, embedding_dim, n)[::-1], [(1, 0)] + [(2, 1)] * n,
                         transposed=True),  # 1 -> 4 -> ... -> L
        )
        self.to_vocabulary = nn.Linear(embedding_dim, vocabulary_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.to_vocabulary(self.net(z).transpose(1, 2))


def word_features(spec: ModalitySpec, width: int = WIDTH) -> WordFeatures:
    return WordFeatures(vocabulary_size(spec), padding_id(spec), spec.shape[0], width)


def build_encoder(spec: ModalitySpec, latent_dim: int) -> WordEncoder:
    return WordEncoder(word_features(spec), latent_dim)


def build_decoder(spec: ModalitySpec, latent_dim: int) -> WordDecoder:
    return WordDecoder(latent_dim, vocabulary_size(spec), spec.shape[0])


def _is_word_sequence(spec: ModalitySpec) -> bool:
    """Text of 4 * 2^n ids over a vocabulary of words (some entry longer than one character)."""
    if spec.kind != "text" or len(spec.shape) != 1 or not any(len(token) > 1 for token in spec.vocabulary or ()):
        return False
    try:
        halvings(spec.shape[0])
    except ValueError:
        return False
    return True


register_networks(NetworkEntry(
    name="words_conv",
    matches=_is_word_sequence,
    encoder=build_encoder,
    decoder=build_decoder,
    priority=10,
))
