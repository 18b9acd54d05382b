"""Pretrained-style digit classifiers used for coherence (anchors-mmvae 4.1, 4.5).

``polymnist_digit``: the MoPoE PolyMNIST classifier, one per modality:
Conv(3->10,k4,s2,p1)-Dropout2d(0.5)-ReLU-Conv(10->20,k4,s2,p1)-Dropout2d(0.5)-ReLU-Flatten(980)-
Linear(980->128)-Dropout(0.5)-ReLU-Linear(128->10), returning logits.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


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


CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {"polymnist_digit": PolyMNISTDigitClassifier}


def build_classifier(name: str, **options) -> nn.Module:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; registered: {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[name](**options)
