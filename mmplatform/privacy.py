"""What of a credentialed dataset may leave the training: one decision, read wherever samples
would be rendered.

A dataset whose manifest is ``restricted`` (MIMIC-CXR: PhysioNet's credentialed licence) keeps
its samples inside the training: no image grid, no decoded text and no per-sample value of it,
real or generated (a decoder can reproduce what it was trained on), reaches Aim or the logs.
Aggregate metrics (coherence, AUROC, PRD, likelihoods, losses) are fine: they are what a paper
reports. ``tracking.log_restricted_samples: true`` is the user's explicit choice to log them
anyway, e.g. to a private Aim repo; the run records which way it went (hparam
``samples_logged``).
"""

from __future__ import annotations

from typing import Any


def samples_may_be_logged(config: Any, manifest: Any) -> bool:
    """Whether generations and inputs of the dataset of ``manifest`` may be rendered to Aim."""
    return not manifest.restricted or bool(config.tracking.log_restricted_samples)
