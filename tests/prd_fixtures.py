"""Classifier features of real and generated PolyMNIST images, to check PRD's clustering on.

Used by ``tests/test_evaluation_prd.py`` (the agreement of the ``torch`` and ``sklearn``
backends) and by ``benchmarks/prd_agreement.py`` (the reference's run-to-run spread that the
test's tolerances come from), so both see the same features. Offline and seconds on a CPU:
the offline PolyMNIST builder (one modality, 1,000 test and 4,000 train tuples), the MoPoE
digit classifier trained for two epochs (~0.8 test accuracy), and a latent-16 VAE trained for
``vae_steps`` steps, whose blurry reconstructions and prior samples are the generated images
an early-epoch evaluation sees. Features are the classifier's 128-d penultimate layer, the
platform's default PRD features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FEATURE_SETS = ("real", "real_train", "reconstructed", "prior")
"""Test images, train images, VAE reconstructions of the test images, VAE prior samples."""


def _images(split: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from data_pipelines.readers import EvalReader

    batches = list(EvalReader(split, 500, rank=0, world_size=1))
    return torch.cat([b.inputs["m0"] for b in batches]), torch.cat([b.labels for b in batches])


def polymnist_prd_features(out: Path, samples: int = 1000, vae_steps: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """``FEATURE_SETS`` -> ``[samples, 128]`` float32 features (``samples`` <= 1,000)."""
    from data_pipelines.modality import ModalitySpec
    from data_pipelines.polymnist import build_polymnist
    from models import MultimodalVAE
    from models.classifiers import PolyMNISTDigitClassifier

    build_polymnist(out, modalities=1, seed=seed, progress=False, log=lambda _: None)
    train, train_labels = _images(out / "train")
    test, _ = _images(out / "test")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = PolyMNISTDigitClassifier()
        optimizer = torch.optim.Adam(classifier.parameters(), 1e-3)
        for _ in range(2):
            order = torch.randperm(len(train))
            for start in range(0, len(train), 64):
                batch = order[start: start + 64]
                loss = torch.nn.functional.cross_entropy(classifier(train[batch]), train_labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        vae = MultimodalVAE([ModalitySpec("m0", "image", (3, 28, 28), "uint8", "laplace")], "mopoe", latent_dim=16)
        optimizer = torch.optim.Adam(vae.parameters(), 1e-3)
        for _ in range(vae_steps):
            loss = vae({"m0": train[torch.randint(0, len(train), (64,))]}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        classifier.eval()
        vae.eval()
        with torch.no_grad():
            images = {
                "real": test[:samples],
                "real_train": train[:samples],
                "reconstructed": vae.generate({"m0": test[:samples]})["m0"][0],
                "prior": vae.sample_prior(samples)["m0"],
            }
            return {name: classifier.features(images[name]).numpy() for name in FEATURE_SETS}
