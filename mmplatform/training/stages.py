"""Training stages in the per-worker loop: what an epoch trains, with which optimizer.

A model family (``models.families``) gives a training its ``StageSchedule``. Entering a stage
freezes every parameter group the stage does not train (``StagedModel.set_stage``) and builds a
fresh optimizer over the trained parameters only, so a frozen group stays bitwise unchanged (Adam
with zero gradients would still move it through its momentum) and a stage never inherits another
stage's moments. Under DDP the model is wrapped anew for each stage: DDP registers the parameters
that require gradients when it is built. A checkpoint records the stage of its epoch; a
resumed training re-enters the stage of its next epoch and takes the checkpoint's optimizer state
only when that stage is the checkpoint's own.
"""

from __future__ import annotations

import torch
from torch import nn

from models.families import Stage, StagedModel, StageSchedule


class StageMismatchError(ValueError):
    """The checkpoint was written in a stage that the config's schedule does not put its epoch in."""


def enter_stage(model: nn.Module, stage: Stage, learning_rate: float) -> torch.optim.Optimizer:
    """Freeze what ``stage`` does not train and return the stage's optimizer."""
    if isinstance(model, StagedModel):
        model.set_stage(stage)
    elif stage.trainable is not None:
        raise ValueError(f"stage {stage.name!r} trains groups {stage.trainable}, but {type(model).__name__} has none")
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    # fused=True: one kernel for all parameters; the per-parameter CPU loop cost more than the step.
    return torch.optim.Adam(trained, lr=learning_rate, fused=True)


def check_checkpoint_stage(schedule: StageSchedule, epoch: int, stage: str | None) -> None:
    """A checkpoint of ``epoch`` written in ``stage`` must fit the schedule (checkpoints from before
    stages existed carry ``None`` and are single-stage)."""
    if stage is None:
        return
    expected = schedule.stage_at(epoch).name
    if stage != expected:
        raise StageMismatchError(
            f"the checkpoint of epoch {epoch} was written in stage {stage!r}, but this config's schedule puts "
            f"epoch {epoch} in stage {expected!r} ({', '.join(f'{s.name} {s.epochs}' for s in schedule.stages)} "
            f"epochs): resume with the stage lengths it was trained with"
        )
