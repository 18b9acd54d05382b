"""Residual conv encoders/decoders for square images of larger sizes (MIMIC-CXR: 128x128
grayscale in the thesis's variant, 224x224 in MMVM's).

The thesis and MoPoE-MIMIC (Klug; anchors-mmvae 4.4) and MMVM (seeds-digest 2.3: "ResNet-based
2-D convolutional encoder and decoder, with the same architecture for the frontal and lateral
views") use residual conv nets for the X-rays without one architecture the platform must match
layer by layer. These are MoPoE's residual blocks (``models.networks.celeba.ResidualBlock``: the
same pre-activation block and widths growing by W per halving, up to 5W) laid out for any size
``S = b * 2^n`` with a base ``b`` in 4..7 and ``n >= 4`` (128 = 4 * 2^5, 224 = 7 * 2^5):

* Encoder: Conv(C->W, k4, s2, p1) S -> S/2, then n - 1 blocks (k4, s2, p1) to 2W, 3W, 4W, 5W, 5W...
  channels down to b, and one block (kb, s1, p0) b -> 1 at 5W -> ``[B, 5W]`` -> Linear(5W -> 2D)
  split into ``(mu, logvar)``.
* Decoder: Linear(D -> 5W) as a 5W x 1 x 1 map, a transposed block (kb, s1, p0) 1 -> b, n - 1
  transposed blocks (k4, s2, p1) doubling with the encoder's channels in reverse, and
  ConvTranspose(W -> C, k4, s2, p1) to S: the Laplace location ``[N, C, S, S]``.

Width ``WIDTH`` = 64 (mmvmvae's base width; MoPoE's CelebA nets use 128): at 128x128 the encoder
has 8.8M parameters, the decoder 8.9M (15.5M / 15.6M at 224). BatchNorm sits inside the blocks, so
training needs batches of two or more.
"""

from __future__ import annotations

from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.networks import NetworkEntry, register_networks
from models.networks.celeba import DROPOUT, FEATURE_MULTIPLIER, ResidualBlock, ResidualEncoder

WIDTH = 64
MIN_HALVINGS = 4
"""Sizes below 4 * 2^4 = 64 are the other nets' (PolyMNIST's 28, CelebA's own 64 layout)."""


def layout(size: int) -> tuple[int, int]:
    """``(b, n)`` with ``size == b * 2^n``, ``4 <= b <= 7``."""
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size, n = size // 2, n + 1
    if not 4 <= size <= 7 or n < MIN_HALVINGS:
        raise ValueError(f"image size {size * 2**n} is not b * 2^n with b in 4..7 and n >= {MIN_HALVINGS}")
    return size, n


def _multipliers(n: int) -> list[int]:
    """Channel multipliers after the stem and each halving block, then at the bottleneck."""
    return [min(i + 1, FEATURE_MULTIPLIER) for i in range(n)] + [FEATURE_MULTIPLIER]


def image_features(channels: int, size: int, width: int = WIDTH, dropout: float = DROPOUT) -> nn.Sequential:
    """``[B, C, S, S]`` in [0, 1] -> ``[B, 5W]``."""
    base, n = layout(size)
    widths = [width * m for m in _multipliers(n)]
    blocks = [ResidualBlock(c_in, c_out, 4, 2, 1, spatial_dims=2, dropout=dropout)
              for c_in, c_out in zip(widths[:-2], widths[1:-1])]
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=False),  # S -> S/2
        *blocks,  # -> b
        ResidualBlock(widths[-2], widths[-1], base, 1, 0, spatial_dims=2, dropout=dropout),  # b -> 1
        nn.Flatten(),
    )


class ResidualImageDecoder(nn.Module):
    """``z [N, D]`` -> Laplace location ``[N, C, S, S]``."""

    def __init__(self, latent_dim: int, channels: int, size: int, width: int = WIDTH, dropout: float = DROPOUT) -> None:
        super().__init__()
        base, n = layout(size)
        widths = [width * m for m in _multipliers(n)][::-1]
        top = widths[0]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, top),
            nn.Unflatten(1, (top, 1, 1)),
            ResidualBlock(top, widths[1], base, 1, 0, spatial_dims=2, transposed=True, dropout=dropout),  # 1 -> b
            *(ResidualBlock(c_in, c_out, 4, 2, 1, spatial_dims=2, transposed=True, dropout=dropout)
              for c_in, c_out in zip(widths[1:-1], widths[2:])),  # -> S/2
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),  # -> S
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def build_encoder(spec: ModalitySpec, latent_dim: int) -> ResidualEncoder:
    return ResidualEncoder(image_features(spec.shape[0], spec.shape[1]), FEATURE_MULTIPLIER * WIDTH, latent_dim)


def build_decoder(spec: ModalitySpec, latent_dim: int) -> ResidualImageDecoder:
    return ResidualImageDecoder(latent_dim, spec.shape[0], spec.shape[1])


def fits(spec: ModalitySpec) -> bool:
    if spec.kind != "image" or len(spec.shape) != 3 or spec.shape[1] != spec.shape[2]:
        return False
    try:
        layout(spec.shape[1])
    except ValueError:
        return False
    return True


# Below the CelebA entry (priority 10), which keeps MoPoE's own layout for RGB 64x64.
register_networks(NetworkEntry(
    name="resnet_image",
    matches=fits,
    encoder=build_encoder,
    decoder=build_decoder,
    priority=5,
))
