"""Network/classifier registries, the PolyMNIST architectures, and the likelihoods."""

from __future__ import annotations

import math

import pytest
import torch

from data_pipelines.modality import ModalitySpec
from models.classifiers import CLASSIFIERS, build_classifier
from models.likelihoods import LIKELIHOODS, build_likelihood
from models.networks import build_networks, select_networks
from models.networks.polymnist import PolyMNISTDecoder, PolyMNISTEncoder

POLY = ModalitySpec("m0", "image", (3, 28, 28), "uint8", "laplace")


def test_registry_picks_networks_from_the_spec():
    assert select_networks(POLY).name == "polymnist_conv"
    # Square images of a size b * 2^n (64, 128, 224...) get the residual nets; others the generic MLP.
    assert select_networks(ModalitySpec("x", "image", (1, 64, 64), "uint8", "laplace")).name == "resnet_image"
    assert select_networks(ModalitySpec("x", "image", (1, 60, 60), "uint8", "laplace")).name == "mlp_image"
    assert select_networks(ModalitySpec("t", "text", (8,), "int64", "categorical", ("a", "b"))).name == "mlp_text"
    assert select_networks(POLY, "mlp_image").name == "mlp_image"
    with pytest.raises(ValueError):
        select_networks(POLY, "nope")


def test_polymnist_networks_shapes_and_sizes():
    encoder, decoder = build_networks(POLY, 512)
    assert isinstance(encoder, PolyMNISTEncoder) and isinstance(decoder, PolyMNISTDecoder)
    mu, logvar = encoder(torch.rand(2, 3, 28, 28))
    assert mu.shape == logvar.shape == (2, 512)
    assert decoder(mu).shape == (2, 3, 28, 28)
    # Parameter counts of anchors-mmvae 4.1: convs + Linear(2048, D) + two Linear(D, D) heads.
    conv = (3 * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 9 + 1) * 128
    assert sum(p.numel() for p in encoder.parameters()) == conv + 2049 * 512 + 2 * 513 * 512
    deconv = (128 * 64 * 9 + 64) + (64 * 32 * 9 + 32) + (32 * 3 * 9 + 3)
    assert sum(p.numel() for p in decoder.parameters()) == 513 * 2048 + deconv


def test_generic_text_networks_round_trip_shapes():
    spec = ModalitySpec("t", "text", (6,), "int64", "categorical", tuple("abcd"))
    encoder, decoder = build_networks(spec, 8)
    mu, _ = encoder(torch.randint(0, 4, (3, 6)))
    assert decoder(mu).shape == (3, 6, 4)


def test_polymnist_classifier_architecture():
    assert "polymnist_digit" in CLASSIFIERS
    spec = ModalitySpec("m0", "image", (3, 28, 28), "uint8", "laplace")
    classifier = build_classifier("polymnist_digit", spec, 10).eval()
    assert classifier(torch.rand(5, 3, 28, 28)).shape == (5, 10)
    weights = [p.shape for p in classifier.parameters() if p.dim() > 1]
    assert weights == [(10, 3, 4, 4), (20, 10, 4, 4), (128, 980), (10, 128)]


def test_likelihoods_agree_with_torch_distributions():
    torch.manual_seed(0)
    assert {"laplace", "gaussian", "bernoulli", "categorical"} <= set(LIKELIHOODS)
    params = torch.randn(2, 3, 1, 4, 4)  # [K*C, B, C, H, W]
    target = torch.rand(3, 1, 4, 4)
    laplace = build_likelihood("laplace")
    assert laplace.scale == 0.75
    expected = torch.distributions.Laplace(params, 0.75).log_prob(target).flatten(2).sum(-1)
    torch.testing.assert_close(laplace.log_prob(params, target), expected)
    gaussian = build_likelihood("gaussian", scale=0.5)
    expected = torch.distributions.Normal(params, 0.5).log_prob(target).flatten(2).sum(-1)
    torch.testing.assert_close(gaussian.log_prob(params, target), expected)
    binary = (target > 0.5).float()
    expected = torch.distributions.Bernoulli(logits=params).log_prob(binary).flatten(2).sum(-1)
    torch.testing.assert_close(build_likelihood("bernoulli").log_prob(params, binary), expected)

    logits = torch.randn(2, 3, 5, 7)  # [K*C, B, L, V]
    ids = torch.randint(0, 7, (3, 5))
    categorical = build_likelihood("categorical")
    expected = torch.distributions.Categorical(logits=logits).log_prob(ids).sum(-1)
    torch.testing.assert_close(categorical.log_prob(logits, ids), expected)
    assert torch.equal(categorical.mean(logits), logits.argmax(-1))
    assert laplace.mean(params).min() >= 0 and laplace.mean(params).max() <= 1
    assert math.isclose(float(build_likelihood("bernoulli").mean(torch.zeros(1))), 0.5)


def test_conv_heads_encoder_is_an_option_with_the_same_features():
    """``polymnist_conv_heads`` is never picked automatically, and differs from the papers' encoder
    only in its heads: 4x4 convolutions on the 128x4x4 features instead of Linear-ReLU-Linear."""
    from models.networks.polymnist import PolyMNISTConvHeadsEncoder

    assert select_networks(POLY).name == "polymnist_conv"
    encoder, decoder = build_networks(POLY, 16, "polymnist_conv_heads")
    assert isinstance(encoder, PolyMNISTConvHeadsEncoder) and isinstance(decoder, PolyMNISTDecoder)
    papers = PolyMNISTEncoder(16)
    encoder.features.load_state_dict(papers.features[:6].state_dict())  # same convolutions, same names
    x = torch.rand(5, 3, 28, 28)
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (5, 16)
    # The heads are one linear map of the flattened features: check against an independent matmul.
    features = papers.features[:6](x).flatten(1)
    weight = encoder.heads.weight.flatten(1)  # [2D, 128*4*4], same (C, H, W) order as Flatten
    expected = features @ weight.T + encoder.heads.bias
    torch.testing.assert_close(torch.cat([mu, logvar], dim=-1), expected, rtol=1e-5, atol=1e-5)
