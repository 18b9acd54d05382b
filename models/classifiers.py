"""Coherence classifiers, registered by name; a dataset's descriptor names one per modality.

A registered factory takes ``(spec, num_outputs)``: the ``ModalitySpec`` of the modality it
judges and the number of logits (classes of a single-label dataset, attributes of a
multi-label one). The module returns logits ``[B, num_outputs]`` and has ``features(x)``, the
penultimate activations used as PRD features, and ``head``, with ``forward(x) == head(features(x))``:
the evaluation classifies generated images and takes their PRD features in one pass.

``polymnist_digit``: the MoPoE PolyMNIST classifier, one per modality:
Conv(3->10,k4,s2,p1)-Dropout2d(0.5)-ReLU-Conv(10->20,k4,s2,p1)-Dropout2d(0.5)-ReLU-Flatten(980)-
Linear(980->128)-Dropout(0.5)-ReLU-Linear(128->10), returning logits.

``image64_attributes`` / ``celeba_text_attributes``: MoPoE's CelebA ClfImg / ClfText (Sutter
et al. 2021, thomassutter/MoPoE ``celeba/networks/ConvNetwork*ClfCelebA.py``): a residual feature
extractor, Dropout(0.5), Linear(-> 40 attribute logits); its output is the PRD feature space (MoPoE's
``get_activations``). Here the extractors are the VAE's own (``models.networks.celeba``) at width
``CELEBA_CLASSIFIER_WIDTH`` = 32 instead of 128, so 5 x 32 = 160 features and ~1.4M / ~0.8M
parameters, trainable on CPU; MoPoE's ClfText also widens to 7 x DIM where the encoder stops at 5.
CUB's images (64x64 RGB) are judged by ``image64_attributes`` too, on its 6 colour groups.

``words_attributes``: the caption classifier of CUB, the word CNN of the VAE's text encoder
(``models.networks.words``) at width ``WORDS_CLASSIFIER_WIDTH``, Dropout(0.5), Linear(-> attribute
logits). MMVM trains ResNet-based classifiers "to predict the shared labels" (seeds-digest 2.4)
without fixing the text architecture; a word CNN is the usual choice for captions. MIMIC-CXR's
findings text uses it too (Klug's MoPoE-MIMIC: a word CNN for the text).

``resnet_image_attributes``: the X-ray classifier of MIMIC-CXR, the residual feature extractor of
``models.networks.resnet_image`` at width ``RESNET_CLASSIFIER_WIDTH`` (MMVM's reference classifier
is its ResNet encoder plus a linear layer with one output per label), Dropout(0.5), Linear.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from data_pipelines.modality import ModalitySpec
from models.networks.celeba import (
    FEATURE_MULTIPLIER,
    image_feature_extractor,
    text_feature_extractor,
    vocabulary_size,
)
from models.networks.resnet_image import image_features as resnet_image_features
from models.networks.words import word_features


class PolyMNISTDigitClassifier(nn.Module):
    def __init__(self, channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        # Split at the penultimate layer: its 128 features are the default PRD feature space.
        self.body = nn.Sequential(
            nn.Conv2d(channels, 10, 4, stride=2, padding=1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Conv2d(10, 20, 4, stride=2, padding=1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(980, 128),
            nn.Dropout(0.5),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``[B, 128]`` penultimate activations (used as PRD features)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


CELEBA_CLASSIFIER_WIDTH = 32
"""Base width of the CelebA attribute classifiers (MoPoE: 128); features are 5x this."""


class AttributeClassifier(nn.Module):
    """A feature extractor ``[B, F]``, Dropout(0.5), Linear(F -> num_outputs) logits (MoPoE's Clf*)."""

    def __init__(self, extractor: nn.Module, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(num_features, num_outputs))

    def features(self, x: Tensor) -> Tensor:
        """``[B, F]`` extractor output (the PRD feature space, MoPoE's ``get_activations``)."""
        return self.extractor(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.extractor(x))


def celeba_image_attribute_classifier(spec: ModalitySpec, num_outputs: int) -> AttributeClassifier:
    extractor = image_feature_extractor(spec.shape[0], CELEBA_CLASSIFIER_WIDTH)
    return AttributeClassifier(extractor, FEATURE_MULTIPLIER * CELEBA_CLASSIFIER_WIDTH, num_outputs)


def celeba_text_attribute_classifier(spec: ModalitySpec, num_outputs: int) -> AttributeClassifier:
    extractor = text_feature_extractor(vocabulary_size(spec), CELEBA_CLASSIFIER_WIDTH)
    return AttributeClassifier(extractor, FEATURE_MULTIPLIER * CELEBA_CLASSIFIER_WIDTH, num_outputs)


WORDS_CLASSIFIER_WIDTH = 32
"""Width of the caption classifier's word CNN (the VAE's: 128); 4 x 32 = 128 features."""


def words_attribute_classifier(spec: ModalitySpec, num_outputs: int) -> AttributeClassifier:
    extractor = word_features(spec, WORDS_CLASSIFIER_WIDTH)
    return AttributeClassifier(extractor, extractor.num_features, num_outputs)


RESNET_CLASSIFIER_WIDTH = 16
"""Width of the X-ray classifiers' residual extractor (the VAE's: 64); 5 x 16 = 80 features."""


def resnet_image_attribute_classifier(spec: ModalitySpec, num_outputs: int) -> AttributeClassifier:
    extractor = resnet_image_features(spec.shape[0], spec.shape[1], RESNET_CLASSIFIER_WIDTH)
    return AttributeClassifier(extractor, FEATURE_MULTIPLIER * RESNET_CLASSIFIER_WIDTH, num_outputs)


ClassifierFactory = Callable[[ModalitySpec, int], nn.Module]
CLASSIFIERS: dict[str, ClassifierFactory] = {}


def register_classifier(name: str, factory: ClassifierFactory) -> None:
    if name in CLASSIFIERS:
        raise ValueError(f"classifier {name!r} registered twice")
    CLASSIFIERS[name] = factory


def build_classifier(name: str, spec: ModalitySpec, num_outputs: int) -> nn.Module:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; registered: {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[name](spec, num_outputs)


register_classifier("polymnist_digit", lambda spec, num_outputs: PolyMNISTDigitClassifier(spec.shape[0], num_outputs))
register_classifier("image64_attributes", celeba_image_attribute_classifier)
register_classifier("celeba_text_attributes", celeba_text_attribute_classifier)
register_classifier("words_attributes", words_attribute_classifier)
register_classifier("resnet_image_attributes", resnet_image_attribute_classifier)
