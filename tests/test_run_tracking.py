"""What a training tracks per epoch (``mmplatform.training.run_tracking``): every metric at every
evaluation, the generated samples at log-spaced evaluations and the last epoch (GitHub issue 16,
item 5: per-evaluation image grids did not scale, ``benchmarks/aim_scale.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from mmplatform.evaluation.results import EvaluationResult, MetricRecord
from mmplatform.evaluation.session import EvaluationOutcome, GeneratedSamples
from mmplatform.tracking import Tracker, query_images, query_metrics, query_runs, query_texts, reindex
from mmplatform.training.run_tracking import TrainingTracker, samples_tracked


def tracked_epochs(every_n_epochs: int, epochs: int) -> list[int]:
    evaluated = [e for e in range(1, epochs + 1) if e % every_n_epochs == 0 or e == epochs]
    return [e for e in evaluated if samples_tracked(e, every_n_epochs, epochs)]


def test_samples_are_tracked_at_log_spaced_evaluations_and_the_last_epoch():
    assert tracked_epochs(1, 12) == [1, 2, 4, 8, 12]
    assert tracked_epochs(1, 3) == [1, 2, 3]  # a short training keeps every evaluation
    assert tracked_epochs(1, 6) == [1, 2, 4, 6]  # make run's trials
    assert tracked_epochs(5, 500) == [5, 10, 20, 40, 80, 160, 320, 500]  # a cluster trial: 8 of 100
    assert tracked_epochs(5, 3) == [3]  # fewer epochs than every_n_epochs: the last one
    # The first evaluation always has samples, so a run that diverges after it still shows some.
    assert all(samples_tracked(n, n, epochs) for n in (1, 2, 5) for epochs in (n, 10 * n))


def test_log_epoch_tracks_metrics_every_evaluation_and_samples_on_the_policys_epochs(tmp_path):
    torch = pytest.importorskip("torch")
    repo, epochs = str(tmp_path / "aim"), 5
    tracker = TrainingTracker(
        Tracker(repo, "run-tracking", hparams={"aggregator": "mopoe"}, fallback_dir=tmp_path / "fallback"),
        every_n_epochs=1, epochs=epochs,
    )
    grid = torch.full((3, 4, 6), 0.5)
    for epoch in range(1, epochs + 1):
        records = [MetricRecord("coherence", 0.1 * epoch, {"split": "test", "kind": "missing"})]
        samples = [GeneratedSamples("conditional", "m0", image=grid), GeneratedSamples("random", "text", text="a b")]
        tracker.log_epoch(epoch, [MetricRecord("loss", float(np.float32(1.0 / epoch)), {"split": "train"})],
                          EvaluationOutcome(EvaluationResult(records), samples))
    tracker.finish({"status": "finished", "epoch": epochs})
    tracker.close()
    reindex(repo)
    (coherence,) = query_metrics(repo, 'metric.name == "coherence"')
    (loss,) = query_metrics(repo, 'metric.name == "loss"')
    assert coherence.steps == loss.steps == [1, 2, 3, 4, 5]
    (images,) = query_images(repo, 'images.name == "generations" and images.context.kind == "conditional"')
    (texts,) = query_texts(repo, 'texts.name == "generated_text"')
    assert images.steps == texts.steps == [1, 2, 4, 5]
    assert images.context == {"kind": "conditional", "modality": "m0", "split": "test"}


def test_pair_breakdowns_stay_out_of_the_aim_run_unless_asked_for(tmp_path):
    """The per-(subset, modality) values are tracked only with ``pair_breakdowns``; their means per
    ``kind`` and every other record always are, and the summary leaves out what was not tracked."""
    pair = MetricRecord("coherence", 0.4, {"split": "test", "kind": "missing", "subset": "m0", "modality": "m1"})
    prd_pair = MetricRecord("prd", 0.2, {"split": "test", "kind": "reconstruction", "subset": "m0", "modality": "m0"})
    kind_mean = MetricRecord("coherence", 0.3, {"split": "test", "kind": "missing"})
    per_subset = MetricRecord("latent_accuracy", 0.7, {"split": "test", "subset": "m0"})
    random_per_modality = MetricRecord("prd", 0.1, {"split": "test", "kind": "random", "modality": "m1"})
    train_per_modality = MetricRecord("nll", 3.0, {"split": "train", "modality": "m1"})
    evaluation = [pair, prd_pair, kind_mean, per_subset, random_per_modality]
    assert [r.is_pair_breakdown for r in [*evaluation, train_per_modality]] == [True, True, False, False, False, False]

    def track(name: str, pair_breakdowns: bool):
        repo = str(tmp_path / name)
        tracker = TrainingTracker(
            Tracker(repo, "pairs", hparams={"aggregator": "mopoe"}, fallback_dir=tmp_path / "fallback"),
            every_n_epochs=1, epochs=1, pair_breakdowns=pair_breakdowns,
        )
        result = EvaluationResult(evaluation)
        tracker.log_epoch(1, [train_per_modality], EvaluationOutcome(result, []))
        tracker.finish({**result.scalars(), "status": "finished"})
        tracker.close()
        reindex(repo)
        series = {(s.name, tuple(sorted(s.context.items()))) for s in query_metrics(repo, "")}
        (run,) = query_runs(repo)
        return series, run.summary

    def key(record):
        return record.name, tuple(sorted(record.context.items()))

    series, summary = track("default", pair_breakdowns=False)
    assert series == {key(r) for r in [kind_mean, per_subset, random_per_modality, train_per_modality]}
    assert summary == {"coherence_missing": 0.3, "latent_accuracy/m0": 0.7, "prd_random/m1": 0.1, "status": "finished"}

    series, summary = track("breakdowns", pair_breakdowns=True)
    assert series == {key(r) for r in [*evaluation, train_per_modality]}
    assert summary["coherence_missing/m0/m1"] == 0.4 and summary["prd_reconstruction/m0/m0"] == 0.2
