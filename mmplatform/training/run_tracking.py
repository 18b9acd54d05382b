"""The Aim run of one training, as the worker loop uses it (rank 0 only).

One Aim run per training. Its hash travels in every checkpoint; before the first
checkpoint exists it is also written next to the Train run's checkpoints
(``<storage>/<name>/aim_run.json``), so that a trial retried before its first checkpoint
re-attaches to the same run instead of leaving an orphan beside a new one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmplatform.config import TrainConfig
from mmplatform.tracking import Tracker

logger = logging.getLogger(__name__)

RUN_HASH_FILE = "aim_run.json"


def samples_tracked(epoch: int, every_n_epochs: int, epochs: int) -> bool:
    """Whether the generated samples of the evaluated ``epoch`` are tracked: at the 1st, 2nd, 4th,
    8th, ... evaluation and at the last epoch, not at every evaluation.

    Aim keeps every step of an image sequence and also rewrites its last image into the run's
    metadata at each step (copied from there, with the first, into the repo's index), and encoding
    the PNGs took about 40% of the tracking's CPU time: a cluster trial (500 epochs, evaluated every 5)
    with grids at each of its 100 evaluations wrote 21.7 MB into the repo, 7.5 MB with this policy,
    and took twice as long to track (``benchmarks/aim_scale.py``). Log-spaced steps keep how the
    samples evolve early on and what the training ended with: 5 of 12 evaluations, 8 of that
    trial's 100. Decided by the epoch alone, so a resumed training logs the same steps; the
    metrics are tracked at every evaluation.
    """
    if epoch == epochs:
        return True
    evaluation, remainder = divmod(epoch, every_n_epochs)
    return remainder == 0 and evaluation > 0 and evaluation & (evaluation - 1) == 0


def _hash_file(config: TrainConfig) -> Path | None:
    storage = config.resolved_storage_path()
    if "://" in storage:  # object storage: the checkpoint alone carries the hash
        return None
    return Path(storage) / config.name / RUN_HASH_FILE


def _recorded_hash(config: TrainConfig) -> str | None:
    path = _hash_file(config)
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text()).get("aim_run_hash")


class TrainingTracker:
    """Per-epoch logging with the contexts users filter on in Aim."""

    def __init__(self, tracker: Tracker, every_n_epochs: int = 1, epochs: int | None = None,
                 pair_breakdowns: bool = False) -> None:
        self.tracker = tracker
        self.every_n_epochs = every_n_epochs
        self.epochs = epochs
        """The training's last epoch; ``None``: unknown, samples of every evaluation are tracked."""
        self.pair_breakdowns = pair_breakdowns
        """Whether the per-(subset, modality) values (``MetricRecord.is_pair_breakdown``) are
        tracked too; off, only their means per ``kind`` are."""
        self._untracked: set[str] = set()
        """Flat names of the breakdowns left out, left out of the summary as well."""

    @property
    def run_hash(self) -> str:
        return self.tracker.run_hash

    def log_epoch(self, epoch: int, train_records, evaluation=None) -> None:
        """The epoch's training records, then the evaluation's records (without the pair
        breakdowns unless ``pair_breakdowns``) and, on the epochs :func:`samples_tracked` picks,
        its generated samples, each under the name and context it carries (nothing is parsed back
        from a flat key)."""
        for record in train_records:
            self.tracker.track(record.value, record.name, step=epoch, context=dict(record.context))
        if evaluation is None:
            return
        for record in evaluation.records:
            if record.is_pair_breakdown and not self.pair_breakdowns:
                self._untracked.add(record.flat_name)
                continue
            self.tracker.track(record.value, record.name, step=epoch, context=dict(record.context))
        if self.epochs is not None and not samples_tracked(epoch, self.every_n_epochs, self.epochs):
            return
        for samples in evaluation.samples:
            if samples.image is not None:
                self.tracker.track_image(samples.image, "generations", step=epoch, context=samples.context())
            if samples.text is not None:
                self.tracker.track_text(samples.text, "generated_text", step=epoch, context=samples.context())

    def finish(self, final_metrics: dict[str, Any]) -> None:
        summary = {key: value for key, value in final_metrics.items()
                   if isinstance(value, (int, float, str)) and key not in self._untracked}
        self.tracker.set_summary(summary)

    def close(self) -> None:
        self.tracker.close()


def skipped_evaluations(config: TrainConfig) -> str:
    """What the family never evaluates and why, for the run's hparams (``none`` when it evaluates
    everything): a missing random coherence must read as "does not apply", never as 0."""
    from models.families import model_family

    family = model_family(config.model.family)
    skipped = family.abilities.skipped_evaluations(family.name)
    if not skipped:
        return "none"
    reasons = sorted(set(skipped.values()))
    return f"{', '.join(skipped)} ({'; '.join(reasons)})"


def open_tracker(config: TrainConfig, run_hash: str | None, samples_logged: bool = True) -> TrainingTracker:
    """``samples_logged``: whether generated samples will be tracked (``mmplatform.privacy``),
    recorded in the run so that a missing image grid is never a mystery."""
    run_hash = run_hash or _recorded_hash(config)
    tracker = Tracker(
        repo=config.tracking.resolved_repo(),
        experiment=config.tracking.experiment,
        run_name=config.tracking.run_name or config.name,
        run_hash=run_hash,
        hparams={**config.flat_hparams(), "samples_logged": samples_logged,
                 "skipped_evaluations": skipped_evaluations(config)},
        fallback_dir=config.tracking.resolved_fallback_dir(),
    )
    path = _hash_file(config)
    # The hash changes when a run that began while the Aim server was down is re-attached.
    if path is not None and tracker.run_hash != run_hash:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"aim_run_hash": tracker.run_hash}))
    return TrainingTracker(tracker, config.evaluation.every_n_epochs, config.training.epochs,
                           pair_breakdowns=config.tracking.pair_breakdowns)
