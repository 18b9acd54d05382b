"""The per-worker training loop that Ray Train runs on every rank.

Per epoch: stream the rank's batches (every rank the same number of steps, or DDP would
hang), step the optimizer unless the divergence guard rejects the step, all-reduce the
epoch's loss terms once, evaluate every ``evaluation.every_n_epochs`` epochs, log to Aim
from rank 0, and ``ray.train.report`` on all ranks (a barrier) with the checkpoint from
rank 0. A restarted worker group resumes from ``ray.train.get_checkpoint()`` at the next
epoch, with the same Aim run, and continues exactly as the uninterrupted training would (the
RNG states are restored after the setup; tests/test_resumption.py). ``test_hooks`` lets tests
inject faults; it does nothing unless ``MMPLATFORM_TEST_HOOKS`` is set.
"""

from __future__ import annotations

import logging
import random
import shutil
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from data_pipelines.manifest import load_manifest
from data_pipelines.readers import EvalReader, TrainReader, make_loader
from mmplatform.config import TrainConfig, build_config
from mmplatform.evaluation.results import MetricRecord
from mmplatform.evaluation.session import EvaluationSession
from mmplatform.training.checkpointing import (
    CheckpointWriteError,
    TrainingState,
    gather_rng_states,
    write_checkpoint_dir,
)
from mmplatform.training.divergence import DIVERGED, FINISHED, RUNNING, DivergenceGuard
from mmplatform.training.model_factory import build_model, model_family_of
from mmplatform.training.run_tracking import open_tracker
from mmplatform.training.stages import check_checkpoint_stage, enter_stage
from mmplatform.training.test_hooks import TestHooks

logger = logging.getLogger(__name__)

TRAIN_CONTEXT = {"split": "train"}
STEPS, SKIPPED_STEPS = ("steps", ""), ("skipped_steps", "")
"""Keys of the step counts among an epoch's summed ``(name, modality)`` terms."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sums(sums: dict[tuple[str, str], float], device: torch.device) -> dict[tuple[str, str], float]:
    """One all-reduce for all of the epoch's accumulated terms, keyed ``(name, modality)`` (same
    key order on every rank)."""
    keys = sorted(sums)
    values = torch.tensor([sums[key] for key in keys], dtype=torch.float64, device=device)
    if _distributed():
        dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def cpu_threads(cpus_per_worker: float) -> int:
    """Torch threads for a worker holding ``cpus_per_worker`` logical CPUs (at least 1)."""
    return max(1, int(cpus_per_worker))


def steps_per_epoch(config: TrainConfig, num_train_samples: int, world_size: int) -> int:
    if config.data.steps_per_epoch is not None:
        return config.data.steps_per_epoch
    return max(1, num_train_samples // (config.data.batch_size * world_size))


def epoch_objective(status: str, evaluated: dict[str, float] | None, last_objective: float) -> tuple[float, float]:
    """The sweep objective an epoch reports, and the one carried on to the next epoch.

    ASHA compares every epoch, but evaluation runs every ``evaluation.every_n_epochs``: an epoch
    without an evaluation (``evaluated`` None, or an evaluation without an objective) reports the
    last evaluated objective (0.0 before the first), and a diverged run the worst value, 0.0.
    """
    if evaluated is not None and "objective" in evaluated:
        last_objective = evaluated["objective"]
    reported = 0.0 if status == DIVERGED else last_objective
    return reported, reported


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = build_config(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    hooks = TestHooks.from_env(rank, config.name)  # None unless a test set MMPLATFORM_TEST_HOOKS
    device = ray.train.torch.get_device()
    # A worker computes with the CPUs it reserved. Left alone, torch starts a thread per core in
    # every worker; two workers on two cores then fight over them (OpenMP spin-waits), which made
    # a local sweep's steps 2-3x slower than the same steps run one at a time.
    torch.set_num_threads(cpu_threads(config.scaling.cpus_per_worker))

    data_root = config.data.root()
    train_dir, test_dir = data_root / "train", data_root / "test"
    manifest = load_manifest(train_dir)
    # Model construction draws from torch and from numpy (FrEIA's AllInOneBlock takes its channel
    # permutations from numpy's global generator): both are seeded, so the same seed gives the
    # same initial model on every rank and in every rerun.
    random.seed(config.training.seed)
    torch.manual_seed(config.training.seed)
    np.random.seed(config.training.seed)
    model = build_model(config, manifest).to(device)
    schedule = model_family_of(config).schedule(config.model.family_options, config.training.epochs)
    guard = DivergenceGuard(config.training.max_bad_steps, config.training.grad_clip_norm)

    start_epoch, run_hash, last_objective = 1, loop_config.get("aim_run_hash"), 0.0
    checkpoint, state = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = TrainingState.load(directory)
        check_checkpoint_stage(schedule, state.epoch, state.stage)
        model.load_state_dict(state.model)
        guard.load_state_dict(state.guard)
        start_epoch, run_hash, last_objective = state.epoch + 1, state.aim_run_hash, state.last_objective

    # The stage of the first epoch to run: its frozen groups and its optimizer, which continues
    # from the checkpoint's state only when the checkpoint's epoch was in the same stage.
    stage_index = schedule.index_at(min(start_epoch, config.training.epochs))
    optimizer = enter_stage(model, schedule.stages[stage_index], config.training.learning_rate)
    if state is not None and schedule.index_at(state.epoch) == stage_index:
        optimizer.load_state_dict(state.optimizer)
    # Evaluation runs the unwrapped module (no DDP collectives inside its forward).
    ddp_model = ray.train.torch.prepare_model(model) if world_size > 1 else model
    steps = steps_per_epoch(config, manifest.num_samples, world_size)
    modalities = config.data.modalities
    train_reader = TrainReader(
        train_dir, batch_size=config.data.batch_size, steps_per_epoch=steps,
        seed=config.training.seed, modalities=modalities,
    )
    eval_reader = EvalReader(
        test_dir, batch_size=config.data.eval_batch_size, modalities=modalities,
        max_samples=config.evaluation.sample_limit,
    )
    evaluation = EvaluationSession(config, model, train_dir=train_dir, device=device)
    # Opened last: a setup error above must not leave an empty Aim run behind.
    tracker = open_tracker(config, run_hash, evaluation.log_samples) if rank == 0 else None
    if hooks is not None:
        hooks.started(start_epoch)
    # The epochs' random streams are set last, after every setup step that draws from them (the
    # coherence classifiers are built, drawing initial weights, before theirs are loaded): a
    # resumed training then continues exactly where the checkpoint left off. Restoring them before
    # the setup shifted a resumed run's torch stream (test_resumption.py).
    if state is not None:
        state.restore_rng(rank)
    else:
        torch.manual_seed(config.training.seed * 1000 + rank)

    metrics: dict[str, Any] | None = None
    try:
        for epoch in range(start_epoch, config.training.epochs + 1):
            if schedule.index_at(epoch) != stage_index:
                stage_index = schedule.index_at(epoch)
                optimizer = enter_stage(model, schedule.stages[stage_index], config.training.learning_rate)
                if world_size > 1:
                    del ddp_model  # DDP registers the trained parameters when built: wrap anew
                    ddp_model = ray.train.torch.prepare_model(model)
            stage = schedule.stages[stage_index]
            train_reader.set_epoch(epoch)
            sums = train_one_epoch(ddp_model, optimizer, guard, make_loader(train_reader, config.data.loader_workers),
                                   device, epoch=epoch, hooks=hooks)
            totals = _all_reduce_sums(sums, device)
            num_steps = max(totals.pop(STEPS), 1.0)
            # Every rank skips the same steps (the guard reads all-reduced gradients): the sum over
            # the ranks counts each skipped step world_size times.
            skipped_steps = totals.pop(SKIPPED_STEPS) / world_size
            # Per-step means of every loss term over all ranks, and the guard's count.
            train_records = [
                MetricRecord(name, value / num_steps, {**TRAIN_CONTEXT, "modality": modality} if modality else TRAIN_CONTEXT)
                for (name, modality), value in totals.items()
            ]
            train_records.append(MetricRecord("bad_steps", float(guard.bad_steps), TRAIN_CONTEXT))
            if len(schedule.stages) > 1:  # Aim shows where each stage begins (0, 1, ... in order)
                train_records.append(MetricRecord("stage", float(stage_index), TRAIN_CONTEXT))
            metrics = {record.flat_name: record.value for record in train_records}
            status = DIVERGED if guard.diverged else (FINISHED if epoch == config.training.epochs else RUNNING)
            metrics.update(epoch=epoch, status=status, bad_steps=guard.bad_steps, skipped_steps=skipped_steps,
                           stage=stage.name)

            evaluated = status != DIVERGED and (
                epoch % config.evaluation.every_n_epochs == 0 or epoch == config.training.epochs
            )
            results = evaluation.run(eval_reader, epoch, rank) if evaluated else None
            if results is not None:
                metrics.update(results.scalars())
            metrics["objective"], last_objective = epoch_objective(
                status, results.scalars() if results is not None else None, last_objective)

            rng_states = gather_rng_states()  # a collective: every rank takes part
            checkpoint_dir = None
            if rank == 0:
                tracker.log_epoch(epoch, train_records, results)
                state = TrainingState(
                    epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    guard=guard.state_dict(), aim_run_hash=tracker.run_hash, rng_states=rng_states,
                    status=status, last_objective=last_objective, metrics=dict(metrics), stage=stage.name,
                )
                checkpoint_dir = write_checkpoint_dir(state)
            try:
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None,
                    checkpoint_dir_name=f"checkpoint_epoch={epoch:04d}",
                )
            except OSError as error:
                if checkpoint_dir is None:
                    raise
                # Ray's own error is a pyarrow traceback deep inside Train; say what broke, in one line.
                run_storage = f"{config.resolved_storage_path().rstrip('/')}/{config.name}"
                raise CheckpointWriteError(
                    f"cannot write the checkpoint of epoch {epoch} into {run_storage} ({error}); the last "
                    f"checkpoint written there is kept"
                ) from error
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            if hooks is not None:
                hooks.after_report(epoch)
            if status == DIVERGED:
                logger.warning("training diverged at epoch %d after %d non-finite steps", epoch, guard.bad_steps)
                break
        # A run restored after its last epoch (e.g. a sweep restored right after the trial
        # finished training) has nothing left to do or to report.
        if tracker is not None and metrics is not None:
            tracker.finish(metrics)
    finally:
        if tracker is not None:
            tracker.close()


def train_one_epoch(
    model, optimizer, guard: DivergenceGuard, loader, device, epoch: int = 0, hooks: TestHooks | None = None
) -> dict[str, float]:
    """One epoch of steps; ``model`` is the DDP-wrapped module when there are several ranks.
    Returns the sums of the logged loss terms over the steps taken, and the step counts."""
    model.train()
    steps, skipped = 0, 0
    # Loss terms accumulate on the device and are read once per epoch, not once per step.
    sums: dict[tuple[str, str], torch.Tensor] = {}
    for step, batch in enumerate(loader, start=1):
        inputs = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.inputs.items()}
        output = model(inputs)
        loss = output.loss if hooks is None else hooks.loss(output.loss, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepped = guard.check_and_clip(model.parameters())
        if stepped:
            optimizer.step()
            steps += 1
            for key, value in output.logged().items():
                sums[key] = sums.get(key, 0.0) + value.detach()
        else:
            skipped += 1
        if hooks is not None:
            hooks.after_step(model, epoch, step, stepped, guard.bad_steps)
        if guard.diverged:
            break
    return {STEPS: float(steps), SKIPPED_STEPS: float(skipped), **{key: float(v) for key, v in sums.items()}}
