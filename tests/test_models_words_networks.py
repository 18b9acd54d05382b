"""Word-level conv text networks (CUB captions) and the caption classifier: selection from the CUB
builder's specs, shapes in train and eval mode, the padding word, a receptive field that covers
the whole caption, gradients, the ability to fit, and a MoPoE ``MultimodalVAE`` on CUB's specs.

Runs on one thread (``one_torch_thread``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_pipelines.cub import SPECIAL_TOKENS, modality_specs
from models.classifiers import build_classifier
from models.likelihoods import build_likelihood
from models.networks import build_networks, select_networks
from models.networks.words import WordDecoder, WordEncoder, WordFeatures, padding_id
from models.vae import MultimodalVAE
from tests.model_fixtures import fit_errors

VOCABULARY = SPECIAL_TOKENS + tuple(f"word{i}" for i in range(57))
IMAGE, TEXT = modality_specs(VOCABULARY)  # the specs the CUB builder writes into its manifests
LATENT = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def captions(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(VOCABULARY), (count, 32), generator=generator)


def test_cub_specs_select_the_shared_image_nets_and_the_word_nets():
    assert select_networks(IMAGE).name == "image64_resnet"
    assert select_networks(TEXT).name == "words_conv"
    # 32 characters are not words: a character vocabulary keeps the generic fallback.
    assert select_networks(dataclasses.replace(TEXT, vocabulary=tuple("abcdefgh"))).name == "mlp_text"
    assert padding_id(TEXT) == VOCABULARY.index("<pad>")


@pytest.mark.parametrize("batch_size, training", [(1, False), (3, True)], ids=["eval-batch1", "train-batch3"])
def test_shapes_and_a_finite_categorical_log_prob(batch_size, training):
    encoder, decoder = build_networks(TEXT, LATENT)
    assert isinstance(encoder, WordEncoder) and isinstance(decoder, WordDecoder)
    encoder.train(training), decoder.train(training)
    ids = captions(batch_size)
    mu, logvar = encoder(ids.to(torch.int32))
    assert mu.shape == logvar.shape == (batch_size, LATENT)
    logits = decoder(mu)
    assert logits.shape == (batch_size, 32, len(VOCABULARY))
    log_prob = build_likelihood(TEXT.likelihood).log_prob(logits, ids)
    assert log_prob.shape == (batch_size,) and torch.isfinite(log_prob).all() and (log_prob < 0).all()
    with pytest.raises(ValueError, match="length 32"):
        encoder(ids[:, :31])


@pytest.mark.parametrize("length", [8, 128])
def test_other_lengths_of_four_times_a_power_of_two(length):
    """MIMIC-CXR's findings are 128 words: the same nets with more halvings."""
    spec = dataclasses.replace(TEXT, shape=(length,))
    assert select_networks(spec).name == "words_conv"
    encoder, decoder = build_networks(spec, LATENT)
    encoder.eval(), decoder.eval()
    ids = torch.randint(0, len(VOCABULARY), (2, length))
    assert decoder(encoder(ids)[0]).shape == (2, length, len(VOCABULARY))
    assert select_networks(dataclasses.replace(TEXT, shape=(48,))).name == "mlp_text"  # not 4 * 2^n


def test_padding_is_embedded_as_zeros_and_every_position_is_seen():
    features = WordFeatures(len(VOCABULARY), padding_id(TEXT), 32, width=8).eval()
    pad = padding_id(TEXT)
    assert torch.equal(features.embedding.weight[pad], torch.zeros(features.embedding.embedding_dim))
    # The receptive field of the bottleneck covers the caption: each position moves the features.
    embedded = features.embedding(captions(1)).transpose(1, 2).detach().requires_grad_(True)
    features.convolutions(embedded).sum().backward()
    assert (embedded.grad.abs().sum(dim=1) > 0).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    encoder, decoder = build_networks(TEXT, LATENT)
    ids = captions(4)
    mu, logvar = encoder(ids)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    loss = (0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
            - build_likelihood("categorical").log_prob(decoder(z), ids)).mean()
    loss.backward()
    for module in (encoder, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_pair_overfits_eight_fixed_captions():
    """200 Adam steps at width 16 more than halve the categorical NLL of 8 random captions (eval mode)."""
    torch.manual_seed(0)
    ids = captions(8, seed=1)
    encoder = WordEncoder(WordFeatures(len(VOCABULARY), padding_id(TEXT), 32, width=16), LATENT)
    decoder = WordDecoder(LATENT, len(VOCABULARY), 32, width=16)
    categorical = build_likelihood("categorical")

    before, after = fit_errors(encoder, decoder, ids, lambda logits: -categorical.log_prob(logits, ids).mean())
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name, spec, features", [("image64_attributes", IMAGE, 160), ("words_attributes", TEXT, 128)],
                         ids=["image", "text"])
def test_colour_group_classifiers(name, spec, features):
    classifier = build_classifier(name, spec, 6).eval()
    x = torch.rand(2, *spec.shape) if spec.kind == "image" else captions(2)
    assert classifier(x).shape == (2, 6)
    assert classifier.features(x).shape == (2, features)


def test_mopoe_vae_on_cub_specs_forward_backward():
    torch.manual_seed(0)
    model = MultimodalVAE([IMAGE, TEXT], "mopoe", latent_dim=LATENT, beta=1.0)
    assert isinstance(model.decoders["text"], WordDecoder)
    output = model({"image": torch.rand(2, *IMAGE.shape), "text": captions(2)})
    assert torch.isfinite(output.loss)
    output.loss.backward()
    generated = model.generate({"image": torch.rand(2, *IMAGE.shape), "text": captions(2)})
    assert generated["text"].shape[-1] == 32 and generated["text"].dtype == torch.int64
