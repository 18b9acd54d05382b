"""Image features for PRD, computed through torch-fidelity's feature-extractor API.

Two kinds, chosen by name from ``PRD_FEATURE_EXTRACTORS``:

* ``classifier`` (default): the penultimate layer of the platform's own coherence classifier
  of the modality, registered with torch-fidelity as ``mmplatform-classifier``. It needs no
  download and fits any image size and channel count (PolyMNIST, CelebA, MIMIC-CXR).
* ``inception-v3-compat``: torch-fidelity's Inception-v3 port (2048-d pool features, the
  MoPoE protocol), only from a local weights file: torch-fidelity would otherwise download
  them, and nothing here may reach the network.

Platform images are float ``[B, C, H, W]`` in [0, 1] (decoder outputs and reader batches);
each kind converts them to what its extractor takes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

CLASSIFIER_EXTRACTOR_NAME = "mmplatform-classifier"
CLASSIFIER_FEATURE = "penultimate"
INCEPTION_EXTRACTOR_NAME = "inception-v3-compat"
INCEPTION_FEATURE = "2048"


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over a classifier's ``features(x) -> [B, F]`` (penultimate layer).

    Built by torch-fidelity as ``cls(name, features_list, classifier=module, ...)``. It holds a
    deep copy: torch-fidelity freezes and switches its extractors to eval mode, which must not
    touch the caller's classifier. Inputs may be float in [0, 1] (platform batches) or uint8
    in [0, 255] (torch-fidelity datasets).
    """

    def __init__(self, name: str, features_list, classifier: nn.Module | None = None, **kwargs) -> None:
        super().__init__(name, features_list)
        if classifier is None:
            raise ValueError(f"feature extractor {name!r} needs classifier=<nn.Module with features(x)>")
        if not callable(getattr(classifier, "features", None)):
            raise TypeError(
                f"{type(classifier).__name__} has no features(x) -> [B, F] method (its penultimate layer); "
                "the classifier PRD features need one"
            )
        self.classifier = copy.deepcopy(classifier)

    @staticmethod
    def get_provided_features_list():
        return (CLASSIFIER_FEATURE,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return CLASSIFIER_FEATURE

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x: Tensor):
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        features = self.classifier.features(x)
        if features.dim() != 2:
            raise ValueError(f"features(x) must return [B, F], got shape {tuple(features.shape)}")
        return (features.float(),)


def register_with_torch_fidelity() -> None:
    """Register ``mmplatform-classifier`` once (torch-fidelity refuses a second registration)."""
    if CLASSIFIER_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(CLASSIFIER_EXTRACTOR_NAME, ClassifierFeatureExtractor)


register_with_torch_fidelity()


@dataclass
class ImageFeatures:
    """Callable: platform images ``[B, C, H, W]`` in [0, 1] -> features ``[B, F]`` (float32, CPU)."""

    extractor: FeatureExtractorBase
    feature: str
    prepare: Callable[[Tensor], Tensor]

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        device = next(self.extractor.parameters()).device
        output = self.extractor(self.prepare(images).to(device))
        return self.extractor.convert_features_tuple_to_dict(output)[self.feature].float().cpu()

    def to(self, device: torch.device | str) -> "ImageFeatures":
        self.extractor.to(device)
        return self


def to_uint8_rgb(images: Tensor) -> Tensor:
    """[0, 1] floats (or uint8) -> uint8 with 3 channels, the Inception input (grayscale is repeated)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception features need [B, 1 or 3, H, W] images, got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _classifier_features(classifier: nn.Module | None = None, weights_path: str | Path | None = None) -> ImageFeatures:
    if classifier is None:
        raise ValueError("the 'classifier' PRD features need the modality's trained coherence classifier")
    extractor = create_feature_extractor(
        CLASSIFIER_EXTRACTOR_NAME, [CLASSIFIER_FEATURE], cuda=False, classifier=classifier, verbose=False
    )
    return ImageFeatures(extractor, CLASSIFIER_FEATURE, prepare=lambda images: images)


def _inception_features(classifier: nn.Module | None = None, weights_path: str | Path | None = None) -> ImageFeatures:
    # torch-fidelity downloads the weights when the path is None: refuse that here.
    if weights_path is None:
        raise ValueError(
            "PRD features 'inception-v3-compat' need feature_extractor_weights_path, a local copy of "
            "weights-inception-2015-12-05-6726825d.pth; nothing is downloaded"
        )
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights for PRD not found at {path} (feature_extractor_weights_path)")
    extractor = create_feature_extractor(
        INCEPTION_EXTRACTOR_NAME, [INCEPTION_FEATURE], cuda=False,
        feature_extractor_weights_path=str(path), verbose=False,
    )
    return ImageFeatures(extractor, INCEPTION_FEATURE, prepare=to_uint8_rgb)


@dataclass(frozen=True)
class FeatureKind:
    build: Callable[..., ImageFeatures]
    per_modality: bool
    """Whether each modality gets its own extractor (its classifier) or all share one."""
    classifier_features: bool = False
    """Whether the features are the classifier's own ``features(x)``, the input of its ``head``:
    the evaluation then classifies an image and takes its features in one pass."""


PRD_FEATURE_EXTRACTORS: dict[str, FeatureKind] = {
    "classifier": FeatureKind(_classifier_features, per_modality=True, classifier_features=True),
    "inception-v3-compat": FeatureKind(_inception_features, per_modality=False),
}


def feature_kind(kind: str) -> FeatureKind:
    if kind not in PRD_FEATURE_EXTRACTORS:
        raise KeyError(f"unknown PRD feature extractor {kind!r}; registered: {sorted(PRD_FEATURE_EXTRACTORS)}")
    return PRD_FEATURE_EXTRACTORS[kind]


def build_image_features(
    kind: str, classifier: nn.Module | None = None, weights_path: str | Path | None = None
) -> ImageFeatures:
    """PRD features of one modality: ``kind`` from ``PRD_FEATURE_EXTRACTORS``."""
    return feature_kind(kind).build(classifier=classifier, weights_path=weights_path)


def build_modality_features(
    kind: str, classifiers: dict[str, nn.Module], modalities, weights_path: str | Path | None = None
) -> dict[str, ImageFeatures]:
    """One ``ImageFeatures`` per modality; a classifier-free kind is built once and shared
    (Inception weights are ~100 MB)."""
    entry = feature_kind(kind)
    if not entry.per_modality:
        shared = entry.build(classifier=None, weights_path=weights_path)
        return {name: shared for name in modalities}
    missing = [name for name in modalities if name not in classifiers]
    if missing:
        raise KeyError(f"PRD features {kind!r} need a classifier for modalities {missing}")
    return {name: entry.build(classifier=classifiers[name], weights_path=weights_path) for name in modalities}
