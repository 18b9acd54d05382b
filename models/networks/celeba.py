"""CelebA residual conv encoders/decoders: the MoPoE CelebA nets (anchors-mmvae 3.3, 4.2).

Architecture facts from MoPoE (Sutter et al. 2021, "Generalized Multimodal ELBO", ICLR;
thomassutter/MoPoE ``celeba/networks``: FeatureExtractorImg/Text, DataGeneratorImg/Text,
ResidualBlocks), with base width ``DIM`` = 128 (its ``--DIM_img`` / ``--DIM_text``; mmvmvae uses 64):

* Residual block (``ResidualBlock``): pre-activation, ``2.0 * shortcut(x) + 0.3 * branch(x)`` with
  branch BN-ReLU-Conv1x1(in->in)-Dropout-BN-ReLU-Conv(in->out, k, s, p)-Dropout and shortcut
  Conv(in->out, k, s, p)-BN; transposed convolutions in the decoders. Dropout 0.5 (``DROPOUT``).
* Image encoder, 5 layers: Conv(3->W, k3, s2, p2) 64->33, then blocks k4/s2 to 2W, 3W, 4W, 5W
  channels, 33->16->8->4->1 (the last with p0), i.e. 5W = 640 features.
* Image decoder: Linear(D->5W) as a 5Wx1x1 map, transposed blocks to 4W (k4, s1, p0: 1->4), 3W,
  2W, W (k4, s2, p1: ->8->16->32), ConvT(W->3, k3, s2, p1, op1) 32->64: the Laplace location.
* Text encoder, 7 layers: one-hot characters ``[B, V, 256]``, Conv1d(V->W, k4, s2, p1) 256->128,
  blocks k4/s2 to 2W, 3W, 4W, 5W, 5W, 5W channels, 128->64->...->4->1 (the last with p0).
* Text decoder: Linear(D->5W) as a 5Wx1 sequence, transposed blocks to 5W (k4, s1, p0: 1->4), 5W,
  4W, 3W, 2W, W (k4, s2, p1: ->8->...->128), ConvT1d(W->V, k4, s2, p1) 128->256: logits, returned
  as ``[N, 256, V]`` (MoPoE applies log-softmax itself; here the categorical likelihood does).

Departures: one latent of size D instead of MoPoE's style + content split (the platform has one
latent; MoPoE's decoders take style 32 + content 32 = 64), so mu and logvar are one
Linear(5W -> 2D) split in two rather than four Linear heads; the convolutions of blocks and
shortcuts carry no bias, as in MoPoE's image blocks (its text blocks and shortcut convolutions have
one, which the BatchNorm shift next to them makes redundant up to dropout); the 1x1 convolution
inside a transposed block is a plain 1x1 convolution (the same linear map as MoPoE's 1x1
transposed one).

BatchNorm normalizes the 1x1 maps at the bottleneck, so *training* needs batches of at least two
(as in MoPoE); inference in ``eval()`` mode takes any batch size.

Parameters at DIM 128, latent 64, 71 characters: image encoder 21.6M / decoder 21.9M, text encoder
13.2M / decoder 13.6M (70M in all, asserted in ``tests/test_models_celeba_networks.py``). One
train step costs ~9 GFLOP per sample (``benchmarks/train_step.py --dataset celeba``); the widths
scale with ``DIM`` (parameters and FLOPs ~ DIM^2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.networks import NetworkEntry, register_networks

DIM = 128
"""Base width W: MoPoE's ``--DIM_img`` / ``--DIM_text`` (128; mmvmvae uses 64)."""

DROPOUT = 0.5
"""Dropout inside every residual block (MoPoE: ``Dropout2d(0.5)`` / ``Dropout(0.5)``)."""

SHORTCUT_WEIGHT, BRANCH_WEIGHT = 2.0, 0.3
"""A block returns ``SHORTCUT_WEIGHT * shortcut(x) + BRANCH_WEIGHT * branch(x)`` (MoPoE's a, b)."""

IMAGE_SIZE = 64
TEXT_LENGTH = 256
FEATURE_MULTIPLIER = 5
"""The bottleneck has ``5 * W`` channels (MoPoE: ``num_layers_img * DIM_img`` = 5 x 128)."""


class ResidualBlock(nn.Module):
    """MoPoE's pre-activation residual block, 1-D or 2-D, down- (conv) or up-sampling (transposed).

    ``branch``: BN-ReLU-Conv1x1(in->in)-Dropout-BN-ReLU-Conv(in->out, k, s, p)-Dropout;
    ``shortcut``: Conv(in->out, k, s, p)-BN, the same resampling as the branch's last convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        spatial_dims: int,
        transposed: bool = False,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        if spatial_dims == 1:
            conv, norm, drop = (nn.ConvTranspose1d if transposed else nn.Conv1d), nn.BatchNorm1d, nn.Dropout
        elif spatial_dims == 2:
            conv, norm, drop = (nn.ConvTranspose2d if transposed else nn.Conv2d), nn.BatchNorm2d, nn.Dropout2d
        else:
            raise ValueError(f"spatial_dims must be 1 or 2, not {spatial_dims}")
        pointwise = nn.Conv1d if spatial_dims == 1 else nn.Conv2d

        def resample() -> nn.Module:
            return conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)

        self.branch = nn.Sequential(
            norm(in_channels),
            nn.ReLU(),
            pointwise(in_channels, in_channels, 1, bias=False),
            drop(dropout),
            norm(in_channels),
            nn.ReLU(),
            resample(),
            drop(dropout),
        )
        self.shortcut = nn.Sequential(resample(), norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return SHORTCUT_WEIGHT * self.shortcut(x) + BRANCH_WEIGHT * self.branch(x)


def _residual_stack(
    width: int, multipliers: tuple[int, ...], *, spatial_dims: int, transposed: bool, dropout: float
) -> list[ResidualBlock]:
    """Blocks between the widths ``width * multipliers``, all kernel 4. Encoders (``transposed``
    False) halve the size with stride 2, padding 1, and the last block maps 4 -> 1 (padding 0);
    decoders mirror it: the first block maps 1 -> 4 (stride 1, padding 0), the others double."""
    channels = [width * m for m in multipliers]
    pairs = list(zip(channels[:-1], channels[1:]))
    blocks = []
    for index, (c_in, c_out) in enumerate(pairs):
        if transposed:
            stride, padding = (1, 0) if index == 0 else (2, 1)
        else:
            stride, padding = 2, (0 if index == len(pairs) - 1 else 1)
        blocks.append(ResidualBlock(c_in, c_out, 4, stride, padding, spatial_dims=spatial_dims,
                                    transposed=transposed, dropout=dropout))
    return blocks


def image_feature_extractor(channels: int = 3, width: int = DIM, dropout: float = DROPOUT) -> nn.Sequential:
    """``[B, C, 64, 64]`` in [0, 1] -> ``[B, 5W]``: MoPoE's FeatureExtractorImg (5 layers)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=2, padding=2, bias=False),  # 64 -> 33
        *_residual_stack(width, (1, 2, 3, 4, 5), spatial_dims=2, transposed=False, dropout=dropout),  # -> 16, 8, 4, 1
        nn.Flatten(),
    )


class CharacterOneHot(nn.Module):
    """Character ids ``[B, L]`` (any integer dtype) -> one-hot channels ``[B, V, L]`` (MoPoE's input)."""

    def __init__(self, vocabulary_size: int) -> None:
        super().__init__()
        self.vocabulary_size = vocabulary_size

    def forward(self, ids: Tensor) -> Tensor:
        return F.one_hot(ids.long(), self.vocabulary_size).transpose(1, 2).float()


def text_feature_extractor(vocabulary_size: int, width: int = DIM, dropout: float = DROPOUT) -> nn.Sequential:
    """Character ids ``[B, 256]`` -> ``[B, 5W]``: MoPoE's FeatureExtractorText (7 layers)."""
    return nn.Sequential(
        CharacterOneHot(vocabulary_size),
        nn.Conv1d(vocabulary_size, width, 4, stride=2, padding=1),  # 256 -> 128
        *_residual_stack(width, (1, 2, 3, 4, 5, 5, 5), spatial_dims=1, transposed=False, dropout=dropout),  # -> 1
        nn.Flatten(),
    )


class ResidualEncoder(nn.Module):
    """``features(x) [B, F]``, then one Linear(F -> 2D) split into ``(mu, logvar)``."""

    def __init__(self, features: nn.Module, num_features: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.heads = nn.Linear(num_features, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.heads(self.features(x)).chunk(2, dim=-1)
        return mu, logvar


class CelebAImageDecoder(nn.Module):
    """``z [N, D]`` -> Laplace location ``[N, C, 64, 64]``: MoPoE's DecoderImg / DataGeneratorImg."""

    def __init__(self, latent_dim: int, channels: int = 3, width: int = DIM, dropout: float = DROPOUT) -> None:
        super().__init__()
        top = FEATURE_MULTIPLIER * width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, top),
            nn.Unflatten(1, (top, 1, 1)),
            *_residual_stack(width, (5, 4, 3, 2, 1), spatial_dims=2, transposed=True, dropout=dropout),  # -> 4, ..., 32
            nn.ConvTranspose2d(width, channels, 3, stride=2, padding=1, output_padding=1),  # 32 -> 64
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class CelebATextDecoder(nn.Module):
    """``z [N, D]`` -> character logits ``[N, 256, V]``: MoPoE's DecoderText / DataGeneratorText."""

    def __init__(self, latent_dim: int, vocabulary_size: int, width: int = DIM, dropout: float = DROPOUT) -> None:
        super().__init__()
        top = FEATURE_MULTIPLIER * width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, top),
            nn.Unflatten(1, (top, 1)),
            *_residual_stack(width, (5, 5, 5, 4, 3, 2, 1), spatial_dims=1, transposed=True, dropout=dropout),  # -> 128
            nn.ConvTranspose1d(width, vocabulary_size, 4, stride=2, padding=1),  # 128 -> 256
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).transpose(1, 2)


def vocabulary_size(spec: ModalitySpec) -> int:
    """Number of character classes: ``len(spec.vocabulary)`` (duplicates included: ids index it)."""
    if not spec.vocabulary:
        raise ValueError(f"text modality {spec.name!r} has no vocabulary")
    return len(spec.vocabulary)


def build_image_encoder(spec: ModalitySpec, latent_dim: int) -> ResidualEncoder:
    features = image_feature_extractor(spec.shape[0], DIM, DROPOUT)
    return ResidualEncoder(features, FEATURE_MULTIPLIER * DIM, latent_dim)


def build_image_decoder(spec: ModalitySpec, latent_dim: int) -> CelebAImageDecoder:
    return CelebAImageDecoder(latent_dim, spec.shape[0], DIM, DROPOUT)


def build_text_encoder(spec: ModalitySpec, latent_dim: int) -> ResidualEncoder:
    features = text_feature_extractor(vocabulary_size(spec), DIM, DROPOUT)
    return ResidualEncoder(features, FEATURE_MULTIPLIER * DIM, latent_dim)


def build_text_decoder(spec: ModalitySpec, latent_dim: int) -> CelebATextDecoder:
    return CelebATextDecoder(latent_dim, vocabulary_size(spec), DIM, DROPOUT)


# The builders read DIM and DROPOUT when called, so setting them before building takes effect.
# RGB only: other channel counts of 64x64 keep the generic fallback unless chosen by name.
register_networks(NetworkEntry(
    name="image64_resnet",
    matches=lambda spec: spec.kind == "image" and tuple(spec.shape) == (3, IMAGE_SIZE, IMAGE_SIZE),
    encoder=build_image_encoder,
    decoder=build_image_decoder,
    priority=10,
))
register_networks(NetworkEntry(
    name="celeba_text_conv",
    matches=lambda spec: spec.kind == "text" and tuple(spec.shape) == (TEXT_LENGTH,),
    encoder=build_text_encoder,
    decoder=build_text_decoder,
    priority=10,
))
