"""PRD features through torch-fidelity 0.4.0, offline (random-initialized networks only)."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits
import torch
import torch_fidelity.feature_extractor_inceptionv3 as inception_module
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import get_featuresdict_from_dataset

from mmplatform.evaluation.feature_extractors import (
    CLASSIFIER_EXTRACTOR_NAME,
    ClassifierFeatureExtractor,
    build_image_features,
    build_modality_features,
    register_with_torch_fidelity,
)


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means with 2 OpenMP threads on 2 shared, loaded cores spins ~40x slower than 1 thread."""
    with threadpool_limits(1):
        yield


class TinyClassifier(nn.Module):
    """Shaped like the MoPoE digit classifier, smaller, with the ``features`` it must expose."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 4, stride=2, padding=1), nn.Dropout2d(0.5), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * 14 * 14, 16), nn.Dropout(0.5), nn.ReLU(),
        )
        self.head = nn.Linear(16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Uint8Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_classifier_extractor_is_registered_once():
    register_with_torch_fidelity()  # a second call must not raise
    assert FEATURE_EXTRACTORS_REGISTRY[CLASSIFIER_EXTRACTOR_NAME] is ClassifierFeatureExtractor


def test_features_are_the_penultimate_layer_in_eval_mode_and_leave_the_classifier_alone():
    classifier = TinyClassifier().train()
    images = torch.rand(6, 3, 28, 28)
    features = build_image_features("classifier", classifier)(images)
    expected = classifier.eval().features(images).detach()
    classifier.train()
    assert features.shape == (6, 16)
    torch.testing.assert_close(features, expected)
    # torch-fidelity freezes its extractor; that must not freeze the caller's classifier.
    assert classifier.training and all(p.requires_grad for p in classifier.parameters())


def test_torch_fidelity_dataset_path_gives_the_same_features():
    classifier = TinyClassifier()
    images = torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8)
    features = build_image_features("classifier", classifier)
    through_fidelity = get_featuresdict_from_dataset(
        Uint8Images(images), features.extractor, batch_size=2, cuda=False, save_cpu_ram=True, verbose=False
    )["penultimate"]
    torch.testing.assert_close(through_fidelity, features(images.float() / 255.0))


def test_classifier_without_features_is_refused():
    with pytest.raises(TypeError, match="features"):
        build_image_features("classifier", nn.Linear(3, 2))
    with pytest.raises(KeyError, match="registered"):
        build_image_features("fid-net", TinyClassifier())


def test_inception_needs_a_local_weights_file_and_never_downloads(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("attempted to download Inception weights")

    monkeypatch.setattr(inception_module, "load_state_dict_from_url", no_download)
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        build_image_features("inception-v3-compat")
    with pytest.raises(FileNotFoundError, match="not-there.pth"):
        build_image_features("inception-v3-compat", weights_path=tmp_path / "not-there.pth")


def test_inception_from_a_local_file_gives_2048_features_for_grayscale(tmp_path, monkeypatch):
    # A random-initialized state dict stands in for the real weights file.
    monkeypatch.setattr(inception_module, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    random_net = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save({k: v.half() for k, v in random_net.state_dict().items()}, weights)
    monkeypatch.undo()

    features = build_modality_features("inception-v3-compat", {}, ["m0", "m1"], weights_path=weights)
    assert features["m0"] is features["m1"]  # one network shared by all modalities
    out = features["m0"](torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


def test_evaluator_prd_with_torch_fidelity_classifier_features():
    from mmplatform.evaluation.evaluator import Evaluator
    from tests.test_evaluation_evaluator import (
        IDENTICAL_PRD_SCORE,
        MODALITIES,
        FakeVAE,
        LabelReader,
        make_batches,
        small_options,
    )

    evaluator = Evaluator(small_options(metrics=("prd",)), {m: LabelReader() for m in MODALITIES})
    scalars = evaluator.evaluate(FakeVAE("copy"), make_batches(0, 40, 8)).scalars()
    assert scalars["prd_missing"] == pytest.approx(IDENTICAL_PRD_SCORE, abs=1e-9)
    assert scalars["prd_f8_reconstruction/m0_m1_m2/m2"] == pytest.approx(1.0, abs=1e-6)


def test_generated_images_are_classified_and_featurized_in_one_pass():
    """With the classifier's own PRD features, coherence's logits are its head applied to those
    features: the classifier's body runs once per generated or prior image instead of twice
    (classification, then features), with the same results."""
    from mmplatform.evaluation.evaluator import Evaluator
    from tests.test_evaluation_evaluator import MODALITIES, NUM_TEST, FakeVAE, LabelReader, make_batches, small_options

    class CountingLabelReader(LabelReader):
        """LabelReader split into a body (``features``, counted) and a ``head``."""

        def __init__(self) -> None:
            super().__init__()
            self.featurized = 0

        def features(self, x: torch.Tensor) -> torch.Tensor:
            self.featurized += len(x)
            return super().features(x)

        def head(self, features: torch.Tensor) -> torch.Tensor:
            labels = features[..., 0].floor().long().clamp(0, 9)  # features[0] is 10 x the label pixel
            return nn.functional.one_hot(labels, 10).float()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    options = small_options(metrics=("coherence", "prd"))
    shared = {m: CountingLabelReader() for m in MODALITIES}
    separate = {m: CountingLabelReader() for m in MODALITIES}
    results = [
        Evaluator(options, shared).evaluate(FakeVAE("copy", prior="half"), make_batches(0, NUM_TEST, 8)),
        # Features given as plain callables: the evaluator cannot know they are the classifier's.
        Evaluator(options, separate, image_features={m: separate[m].features for m in MODALITIES}).evaluate(
            FakeVAE("copy", prior="half"), make_batches(0, NUM_TEST, 8)
        ),
    ]
    generated = 7 * NUM_TEST  # 7 subsets of 3 modalities
    prior = max(options.random_coherence_samples, options.prd_samples)
    for m in MODALITIES:
        # Real test images go through torch-fidelity's copy of the classifier, not this instance.
        assert shared[m].featurized == generated + prior
        # Separately: every generated image twice, the real ones once, prior samples up to twice.
        assert separate[m].featurized >= 2 * generated + NUM_TEST + prior
    assert results[0].scalars() == pytest.approx(results[1].scalars(), rel=1e-12, abs=1e-12)
