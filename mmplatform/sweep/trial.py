"""One sweep trial: a Tune function that builds and fits a TorchTrainer.

Ray 2.60's Train V2 cannot be passed to a Tuner; instead each trial is this small driver.
The Train run's name comes from the trial id, so a retried or restored trial finds its own
checkpoints in the shared storage and resumes them (and, through them, its Aim run).
``TuneReportCallback`` forwards rank 0's per-epoch reports to Tune, where ASHA reads the
``epoch`` we report ourselves.
"""

from __future__ import annotations

from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from mmplatform.sweep.config import SweepConfig
from mmplatform.training.launcher import build_trainer, fit_trainer


def run_trial(sampled: dict[str, Any], sweep_tree: dict[str, Any]) -> None:
    sweep = SweepConfig.model_validate(sweep_tree)
    trial_id = ray.tune.get_context().get_trial_id()
    config = sweep.trial_config(sampled, trial_id)
    fit_trainer(build_trainer(config, callbacks=[TuneReportCallback()]))
