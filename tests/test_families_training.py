"""Every model family through the real platform: Ray Train on a local Ray, PolyMNIST shards, the
evaluation with coherence classifiers and latent probes, a real Aim repo.

- MMVM: trains, evaluates, and has no random coherence at all (not a 0); the Aim run says why.
- JNF and JNF-DCCA: every stage runs in order (``stage`` in the reports and in Aim), and the HMC
  acceptance rate of the subset posteriors' chains is reported.
- A JNF training whose worker is killed after epoch 3 (stage 2) resumes in stage 2 at epoch 4:
  the joint encoder and decoders (stage 1's groups) are bitwise those of the end of stage 1, and
  the whole model ends bitwise as the uninterrupted training's.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from mmplatform.config import build_config
from mmplatform.tracking import query_metrics, query_runs, reindex
from mmplatform.training.checkpointing import TrainingState
from mmplatform.training.test_hooks import HOOKS_ENV
from tests.fault_fixtures import wait_for_pause, write_untrained_classifiers

TIMEOUT_S = 600
JNF_OPTIONS = {"joint_epochs": 2, "flow_steps": 1, "flow_width": 16, "posterior_samples": 4, "hmc_burn_in": 5,
               "hmc_leapfrog_steps": 4}


@pytest.fixture(scope="module")
def classifiers(polymnist_shards, tmp_path_factory) -> Path:
    return write_untrained_classifiers(polymnist_shards, tmp_path_factory.mktemp("families") / "classifiers")


def family_tree(root: Path, shards: Path, classifiers: Path, name: str, family: str, options: dict,
                epochs: int) -> dict:
    return {
        "name": name,
        "storage_path": str(root / "results"),
        "data": {"path": str(shards), "batch_size": 8, "steps_per_epoch": 3, "loader_workers": 0,
                 "eval_batch_size": 32},
        "model": {"family": family, "family_options": options, "latent_dim": 4},
        "training": {"epochs": epochs, "seed": 3, "max_failures": 1, "checkpoints_to_keep": epochs},
        "evaluation": {"metrics": ["coherence", "latent_probe"],
                       "objective_weights": {"coherence_missing": 1.0},
                       "classifiers_dir": str(classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 20, "random_coherence_samples": 16, "sample_limit": 24},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1.0},
        "tracking": {"repo": str(root / "aim"), "experiment": "families", "fallback_dir": str(root / "fallback")},
    }


def states(tree: dict) -> dict[int, TrainingState]:
    directory = Path(tree["storage_path"]) / tree["name"]
    return {epoch: TrainingState.load(directory / f"checkpoint_epoch={epoch:04d}")
            for epoch in range(1, tree["training"]["epochs"] + 1)}


def aim_run(tree: dict):
    repo = tree["tracking"]["repo"]
    reindex(repo)
    (run,) = query_runs(repo, f'run.hparams.run_name == "{tree["name"]}"')
    series = {(s.name, json.dumps(s.context, sort_keys=True)): s for s in query_metrics(repo, f'run.hash == "{run.run_hash}"')}
    return run, series


def test_mmvm_trains_and_evaluates_without_random_generation(ray_cluster, polymnist_shards, classifiers, tmp_path):
    from mmplatform.training.launcher import fit

    tree = family_tree(tmp_path, polymnist_shards, classifiers, "mmvm", "mmvm", {"alpha_anneal_steps": 4}, epochs=2)
    result = fit(build_config(tree))
    assert result.error is None and result.metrics["status"] == "finished"
    metrics = result.metrics
    assert 0.0 <= metrics["coherence_missing"] <= 1.0 and "latent_accuracy/m0_m1_m2" in metrics
    assert not any(key.startswith("coherence_random") for key in metrics)  # skipped, never a 0
    saved = states(tree)
    # alpha falls from 1 to 0 over 4 steps: epoch 1's 3 steps average 0.75, epoch 2's (0.25, 0, 0) 1/12.
    assert saved[1].metrics["train/alpha"] == pytest.approx(0.75)
    assert metrics["train/alpha"] == pytest.approx(0.25 / 3)
    assert saved[2].model["training_steps"] == 6
    run, series = aim_run(tree)
    assert "coherence/random" in run.hparams["skipped_evaluations"]
    assert "no unconditional generation" in run.hparams["skipped_evaluations"]
    assert not [key for key in series if key[0] == "coherence" and '"random"' in key[1]]


@pytest.mark.parametrize("family", ["jnf", "jnf_dcca"])
def test_jnf_families_run_their_stages_in_order(ray_cluster, polymnist_shards, classifiers, tmp_path, family):
    from mmplatform.training.launcher import fit

    options = dict(JNF_OPTIONS, **({"dcca_epochs": 1, "dcca_dim": 3} if family == "jnf_dcca" else {}))
    epochs = 5 if family == "jnf_dcca" else 4
    tree = family_tree(tmp_path, polymnist_shards, classifiers, family, family, options, epochs=epochs)
    result = fit(build_config(tree))
    assert result.error is None and result.metrics["status"] == "finished"
    expected = (["dcca"] if family == "jnf_dcca" else []) + ["joint"] * 2 + ["unimodal"] * 2
    saved = states(tree)
    assert [saved[epoch].stage for epoch in sorted(saved)] == expected
    assert [saved[epoch].metrics["stage"] for epoch in sorted(saved)] == expected
    assert 0.0 < result.metrics["hmc_acceptance"] <= 1.0
    assert "coherence_random" in result.metrics  # JNF samples its prior
    _, series = aim_run(tree)
    stage_series = series[("stage", json.dumps({"split": "train"}))]
    order = ["dcca", "joint", "unimodal"] if family == "jnf_dcca" else ["joint", "unimodal"]
    assert stage_series.values == [float(order.index(name)) for name in expected]
    assert ("hmc_acceptance", json.dumps({"split": "test"})) in series


def test_jnf_killed_in_stage_2_resumes_in_stage_2_with_stage_1_frozen(
    ray_cluster, polymnist_shards, classifiers, tmp_path, monkeypatch
):
    from mmplatform.training.launcher import fit

    reference = family_tree(tmp_path / "reference", polymnist_shards, classifiers, "jnf-reference", "jnf",
                            JNF_OPTIONS, epochs=4)
    assert fit(build_config(reference)).error is None

    tree = family_tree(tmp_path / "killed", polymnist_shards, classifiers, "jnf-killed", "jnf", JNF_OPTIONS, epochs=4)
    events = tmp_path / "events"
    monkeypatch.setenv(HOOKS_ENV, json.dumps({"events_dir": str(events), "pause_after_epoch": 3}))
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", fit(build_config(tree))))
    runner.start()
    try:
        pid = wait_for_pause(events, runner.is_alive, checkpoint_of=(Path(tree["storage_path"]), 3))
        os.kill(pid, signal.SIGKILL)
    finally:
        runner.join(timeout=TIMEOUT_S)
    assert outcome["result"].error is None and outcome["result"].metrics["status"] == "finished"
    starts = [json.loads(line) for line in (events / "events.jsonl").read_text().splitlines()]
    assert [event["start_epoch"] for event in starts] == [1, 4]

    got, expected = states(tree), states(reference)
    assert [got[epoch].stage for epoch in range(1, 5)] == ["joint", "joint", "unimodal", "unimodal"]
    joint_keys = [key for key in got[2].model if key.startswith(("joint_encoder.", "decoders."))]
    unimodal_keys = [key for key in got[2].model if key.startswith(("encoders.", "flows."))]
    assert joint_keys and unimodal_keys
    for key in joint_keys:  # stage 1's groups: untouched by stage 2, across the restart
        assert torch.equal(got[4].model[key], got[2].model[key]), key
    assert any(not torch.equal(got[4].model[key], got[2].model[key]) for key in unimodal_keys)
    for key, value in expected[4].model.items():  # and the resumed training is the uninterrupted one
        assert torch.equal(got[4].model[key], value), key
    assert got[4].metrics == expected[4].metrics
