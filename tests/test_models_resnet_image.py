"""Residual image nets for larger square images (MIMIC-CXR's 128x128 and 224x224 grayscale views):
the size layout, selection, shapes in train and eval mode, parameter counts, gradients and the
ability to fit."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.modality import ModalitySpec
from models.likelihoods import build_likelihood
from models.networks import build_networks, select_networks
from models.networks.resnet_image import ResidualImageDecoder, image_features, layout
from models.networks.celeba import ResidualEncoder
from tests.model_fixtures import fit_errors

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LATENT = 16


def xray(size: int, channels: int = 1) -> ModalitySpec:
    return ModalitySpec("frontal", "image", (channels, size, size), "uint8", "laplace")


@pytest.mark.parametrize("size, expected", [(64, (4, 4)), (128, (4, 5)), (224, (7, 5)), (112, (7, 4)), (256, (4, 6))])
def test_layout_splits_the_size_into_a_base_and_halvings(size, expected):
    assert layout(size) == expected
    base, n = expected
    assert base * 2**n == size


@pytest.mark.parametrize("size", [28, 32, 96 + 1, 200])
def test_sizes_without_a_layout_are_left_to_other_nets(size):
    with pytest.raises(ValueError, match="b \\* 2\\^n"):
        layout(size)
    assert select_networks(xray(size)).name != "resnet_image"


def test_selection_keeps_celeba_and_polymnist_layouts():
    assert select_networks(xray(128)).name == "resnet_image"
    assert select_networks(xray(224)).name == "resnet_image"
    assert select_networks(xray(64, channels=3)).name == "image64_resnet"  # MoPoE's own RGB 64x64 nets
    assert select_networks(xray(28, channels=3)).name == "polymnist_conv"


@pytest.mark.parametrize("size", [128, 224])
@pytest.mark.parametrize("batch_size, training", [(1, False), (3, True)], ids=["eval-batch1", "train-batch3"])
def test_shapes(size, batch_size, training):
    encoder, decoder = build_networks(xray(size), LATENT)
    encoder.train(training), decoder.train(training)
    mu, logvar = encoder(torch.rand(batch_size, 1, size, size))
    assert mu.shape == logvar.shape == (batch_size, LATENT)
    location = decoder(mu)
    assert location.shape == (batch_size, 1, size, size) and torch.isfinite(location).all()


def test_parameter_counts_of_the_docstring():
    encoder, decoder = build_networks(xray(128), LATENT)
    assert round(sum(p.numel() for p in encoder.parameters()) / 1e5) / 10 == 8.8
    assert round(sum(p.numel() for p in decoder.parameters()) / 1e5) / 10 == 8.9


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    encoder = ResidualEncoder(image_features(1, 64, width=8), 40, LATENT)
    decoder = ResidualImageDecoder(LATENT, 1, 64, width=8)
    x = torch.rand(2, 1, 64, 64)
    mu, logvar = encoder(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    loss = -build_likelihood("laplace").log_prob(decoder(z), x).mean() + (mu.square() + logvar.exp() - logvar).sum()
    loss.backward()
    for module in (encoder, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_pair_overfits_eight_fixed_images():
    """200 Adam steps at width 8 more than halve the L1 error on 8 smooth 64x64 grayscale images."""
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 1, 8, 8), size=64, mode="bilinear", align_corners=False)
    encoder = ResidualEncoder(image_features(1, 64, width=8), 40, LATENT)
    decoder = ResidualImageDecoder(LATENT, 1, 64, width=8)
    before, after = fit_errors(encoder, decoder, x, lambda location: (location - x).abs().mean())
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("size", [128, 224])
def test_finding_classifier(size):
    from models.classifiers import build_classifier

    classifier = build_classifier("resnet_image_attributes", xray(size), 14).eval()
    x = torch.rand(2, 1, size, size)
    assert classifier(x).shape == (2, 14) and classifier.features(x).shape == (2, 80)
