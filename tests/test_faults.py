"""Faults of the fault matrix (GitHub issue 16) not covered elsewhere, each injected into a tiny
real training (MoPoE on PolyMNIST, 2 epochs of 2 steps, one CPU worker) on the session's Ray
cluster and compared by value with an uninterrupted baseline (``tests/fault_fixtures.py``, shared
with ``benchmarks/fault_matrix.py``, which measures all seven faults):

- a second Ray node (``ray start --address``, token auth) hosting the Train worker, killed by PID
  half-way through epoch 2: the worker group restarts on a replacement node from the epoch-1
  checkpoint;
- a test shard truncated on disk while the second trial of a 2-trial sweep runs: that trial
  fails with an error naming the shard, the first finished, the sweep ends and reports both;
- the run's checkpoint directory made unwritable (for root too: ``chattr +i``) after epoch 1:
  the training ends with a one-line error naming the directory; the epoch-1 checkpoint is kept;
- the Aim server killed after epoch 1 and restarted on the same port and repo: the training
  finishes, its tracker re-attaches to the run by itself, and every baseline point is in the one
  run with no journal left to replay.

The worker killed, the driver killed and the sweep driver killed are tested in
``test_resumption.py``, ``test_training.py`` and ``test_sweep.py``.
"""

from __future__ import annotations


import pytest

from tests.fault_fixtures import FaultLab, run_dir, write_untrained_classifiers

EPOCHS, STEPS = 2, 2


@pytest.fixture(scope="module")
def lab(ray_cluster, polymnist_shards, tmp_path_factory) -> FaultLab:
    root = tmp_path_factory.mktemp("faults")
    classifiers = write_untrained_classifiers(polymnist_shards, root / "classifiers")
    return FaultLab(ray_cluster, polymnist_shards, classifiers, root / "runs", epochs=EPOCHS, steps_per_epoch=STEPS)


def assert_same_final_model(lab: FaultLab, tree: dict) -> None:
    from mmplatform.training.checkpointing import TrainingState

    name = f"checkpoint_epoch={EPOCHS:04d}"
    got = TrainingState.load(run_dir(tree) / name)
    expected = TrainingState.load(run_dir(lab.baseline.tree) / name)
    assert all(got.model[key].equal(value) for key, value in expected.model.items())
    assert got.metrics == expected.metrics


def test_a_killed_second_node_resumes_on_a_replacement_node_from_its_checkpoint(lab):
    outcome = lab.node_killed()
    assert outcome.outcome == "survived", outcome
    assert outcome.details["worker_was_on_second_node"] is True
    # The epoch-1 checkpoint was used: only the half epoch since then was trained again.
    assert outcome.epochs_lost == pytest.approx(0.5)
    assert outcome.metrics_lost == 0 and outcome.duplicate_runs == 0
    assert_same_final_model(lab, lab.tree("node-killed"))


def test_a_truncated_shard_fails_its_trial_by_name_and_the_sweep_goes_on(lab):
    outcome = lab.shard_truncated()
    shard = outcome.details["shard"]
    assert outcome.outcome == "reported", outcome
    assert shard in outcome.message and "ShardError" in outcome.message, outcome.message
    statuses = sorted((t["trial_id"][-5:], t["status"]) for t in outcome.details["trials"])
    assert statuses == [("00000", "finished"), ("00001", "error")], statuses
    assert outcome.trials_lost == 0 and outcome.duplicate_runs == 0
    # Both trials' Aim runs hold the baseline's values for every epoch they finished.
    assert outcome.metrics_lost == 0


def test_an_unwritable_checkpoint_directory_is_named_and_the_last_checkpoint_kept(lab):
    outcome = lab.checkpoint_unwritable()
    directory = str(run_dir(lab.tree("checkpoint-unwritable")))
    assert outcome.outcome == "reported", outcome
    message = outcome.message
    assert message.startswith("CheckpointWriteError: cannot write the checkpoint of epoch 2 into "), message
    assert directory in message and "\n" not in message
    assert outcome.details["last_checkpoint_epoch"] == 1
    assert outcome.details["last_checkpoint_equals_baseline"] is True
    assert outcome.metrics_lost == 0 and outcome.duplicate_runs == 0


def test_an_aim_server_restarted_mid_run_loses_no_metric_and_keeps_one_run(lab):
    outcome = lab.aim_restarted()
    assert outcome.outcome == "survived", outcome
    assert outcome.details["aim_runs"] == 1 and outcome.duplicate_runs == 0
    assert outcome.metrics_lost == 0, outcome.details
    # Without any replay: the tracker re-attached to the restarted server and left no journal.
    assert outcome.details["journals_left"] == 0 and outcome.details["metrics_lost_before_replay"] == 0
    assert_same_final_model(lab, lab.tree("aim-restarted"))
