"""CelebA networks (MoPoE's residual conv nets) and attribute classifiers: selection, shapes,
gradients, likelihoods, the ability to fit, and a MoPoE ``MultimodalVAE`` built on them.

Runs on one thread (``one_torch_thread``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_pipelines.celeba import modality_specs as celeba_modality_specs
from data_pipelines.modality import ModalitySpec
from models.classifiers import build_classifier
from models.likelihoods import build_likelihood
from models.networks import NETWORKS, build_networks, select_networks
from models.networks.celeba import (
    CelebAImageDecoder,
    CelebATextDecoder,
    ResidualEncoder,
    image_feature_extractor,
    text_feature_extractor,
)
from models.vae import MultimodalVAE
from tests.model_fixtures import fit_errors

# 71 characters, '-' twice: the shape of MoPoE's alphabet (ids index it, so 71 classes).
ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} \n")
IMAGE = ModalitySpec("image", "image", (3, 64, 64), "uint8", "laplace")
TEXT = ModalitySpec("text", "text", (256,), "uint8", "categorical", ALPHABET)
POLYMNIST = ModalitySpec("m0", "image", (3, 28, 28), "uint8", "laplace")
NUM_ATTRIBUTES = 40
LATENT = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample_input(spec: ModalitySpec, batch_size: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """What the readers deliver: float images in [0, 1], integer character ids."""
    if spec.kind == "image":
        return torch.rand(batch_size, *spec.shape)
    return torch.randint(0, len(spec.vocabulary), (batch_size, *spec.shape)).to(dtype)


def output_shape(spec: ModalitySpec, batch_size: int) -> tuple[int, ...]:
    if spec.kind == "image":
        return (batch_size, *spec.shape)
    return (batch_size, *spec.shape, len(spec.vocabulary))


def test_registry_picks_celeba_networks_for_celeba_specs_only():
    assert len(ALPHABET) == 71 and len(set(ALPHABET)) == 70
    assert select_networks(IMAGE).name == "image64_resnet"
    assert select_networks(TEXT).name == "celeba_text_conv"
    assert select_networks(dataclasses.replace(TEXT, vocabulary=tuple("abc"))).name == "celeba_text_conv"
    assert select_networks(POLYMNIST).name == "polymnist_conv"
    image, text = celeba_modality_specs()  # the specs the CelebA builder writes into its manifests
    assert (select_networks(image).name, select_networks(text).name) == ("image64_resnet", "celeba_text_conv")
    assert not NETWORKS["image64_resnet"].matches(POLYMNIST)
    # Only RGB 64x64 images and 256-character text are taken automatically (grayscale 64x64 gets
    # the residual nets laid out for any size, models.networks.resnet_image).
    assert select_networks(dataclasses.replace(IMAGE, shape=(1, 64, 64))).name == "resnet_image"
    assert select_networks(dataclasses.replace(TEXT, shape=(8,))).name == "mlp_text"
    with pytest.raises(ValueError, match="no vocabulary"):
        build_networks(dataclasses.replace(TEXT, vocabulary=()), LATENT)


def test_sizes_at_mopoe_width():
    """DIM 128: a 5 x 128 = 640-feature bottleneck in both encoders; the parameter counts of the docstring."""
    image_encoder, image_decoder = build_networks(IMAGE, LATENT)
    text_encoder, text_decoder = build_networks(TEXT, LATENT)
    assert isinstance(image_encoder, ResidualEncoder) and isinstance(image_decoder, CelebAImageDecoder)
    assert isinstance(text_encoder, ResidualEncoder) and isinstance(text_decoder, CelebATextDecoder)
    image_encoder.eval(), text_encoder.eval()
    assert image_encoder.features(sample_input(IMAGE, 1)).shape == (1, 640)
    assert text_encoder.features(sample_input(TEXT, 1)).shape == (1, 640)
    networks = (image_encoder, image_decoder, text_encoder, text_decoder)
    counts = [sum(p.numel() for p in net.parameters()) for net in networks]
    assert counts == [21_557_248, 21_911_043, 13_242_112, 13_595_847]


@pytest.mark.parametrize("spec", [IMAGE, TEXT], ids=["image", "text"])
@pytest.mark.parametrize("batch_size, training", [(1, False), (3, True)], ids=["eval-batch1", "train-batch3"])
def test_pair_shapes(spec, batch_size, training):
    encoder, decoder = build_networks(spec, LATENT)
    encoder.train(training), decoder.train(training)
    mu, logvar = encoder(sample_input(spec, batch_size))
    assert mu.shape == logvar.shape == (batch_size, LATENT)
    params = decoder(mu)
    assert params.shape == output_shape(spec, batch_size)
    assert torch.isfinite(params).all()


def test_text_encoder_takes_uint8_and_int64_ids_alike():
    encoder, _ = build_networks(TEXT, LATENT)
    encoder.eval()
    ids = sample_input(TEXT, 2)
    torch.testing.assert_close(encoder(ids.to(torch.uint8)), encoder(ids))


@pytest.mark.parametrize("spec", [IMAGE, TEXT], ids=["image", "text"])
def test_gradients_reach_every_parameter(spec):
    torch.manual_seed(0)
    encoder, decoder = build_networks(spec, LATENT)
    x = sample_input(spec, 2)
    mu, logvar = encoder(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
    loss = (kl - build_likelihood(spec.likelihood).log_prob(decoder(z), x)).mean()
    loss.backward()
    for module in (encoder, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_text_logits_give_a_finite_categorical_log_prob(dtype):
    encoder, decoder = build_networks(TEXT, LATENT)
    encoder.eval(), decoder.eval()
    ids = sample_input(TEXT, 3, dtype)
    mu, _ = encoder(ids)
    logits = decoder(torch.cat([mu, mu + 1.0])).reshape(2, 3, 256, len(ALPHABET))  # [K, B, L, V]
    log_prob = build_likelihood("categorical").log_prob(logits, ids)
    assert log_prob.shape == (2, 3)
    assert torch.isfinite(log_prob).all() and (log_prob < 0).all()


@pytest.mark.parametrize(
    "name, spec", [("image64_attributes", IMAGE), ("celeba_text_attributes", TEXT)], ids=["image", "text"]
)
@pytest.mark.parametrize("batch_size, training", [(1, False), (3, True)], ids=["eval-batch1", "train-batch3"])
def test_attribute_classifiers(name, spec, batch_size, training):
    classifier = build_classifier(name, spec, NUM_ATTRIBUTES).train(training)
    x = sample_input(spec, batch_size)
    assert classifier(x).shape == (batch_size, NUM_ATTRIBUTES)
    assert classifier.features(x).shape == (batch_size, 160)
    assert sum(p.numel() for p in classifier.parameters()) < 1_500_000


def smooth_random_images(count: int) -> torch.Tensor:
    """Random 8x8 colour fields upsampled to 64x64: random, but with structure to compress."""
    coarse = torch.rand(count, 3, 8, 8)
    return torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_pair_overfits_eight_fixed_examples(modality):
    """200 Adam steps at width 8 (the registered nets' architecture, 1/16 of the width) more than
    halve the L1 error on 8 images / the categorical NLL on 8 random strings (eval mode)."""
    torch.manual_seed(0)
    width, latent = 8, 16
    if modality == "image":
        x = smooth_random_images(8)
        encoder = ResidualEncoder(image_feature_extractor(3, width), 5 * width, latent)
        decoder = CelebAImageDecoder(latent, 3, width)

        def error(params):
            return (params - x).abs().mean()
    else:
        x = sample_input(TEXT, 8)
        encoder = ResidualEncoder(text_feature_extractor(len(ALPHABET), width), 5 * width, latent)
        decoder = CelebATextDecoder(latent, len(ALPHABET), width)
        categorical = build_likelihood("categorical")

        def error(params):
            return -categorical.log_prob(params, x).mean()

    before, after = fit_errors(encoder, decoder, x, error)
    assert after < 0.5 * before, (before, after)


def test_mopoe_vae_on_celeba_specs_forward_backward():
    torch.manual_seed(0)
    model = MultimodalVAE([IMAGE, TEXT], "mopoe", latent_dim=LATENT, beta=2.5)
    assert isinstance(model.decoders["image"], CelebAImageDecoder)
    assert isinstance(model.decoders["text"], CelebATextDecoder)
    output = model({"image": sample_input(IMAGE, 2), "text": sample_input(TEXT, 2)})
    assert torch.isfinite(output.loss)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
