"""The sweep's arithmetic and checks, without a Ray cluster: what one trial holds, how many trials
run at once, which search spaces are refused (naming the key), and the objective a trial reports
on epochs without an evaluation."""

from __future__ import annotations

from unittest import mock

import pytest

from mmplatform.config import ConfigError, build_config, check_against_cluster
from mmplatform.paths import CLUSTER_MAX_GPUS_ENV, TRIAL_DRIVER_RESOURCE
from mmplatform.sweep.config import build_sweep_config
from mmplatform.sweep.runner import derive_max_concurrent_trials, trial_resources
from mmplatform.training.divergence import DIVERGED, FINISHED, RUNNING
from mmplatform.training.worker import epoch_objective


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """Profiles resolve their folders under the data root: keep them in tmp_path."""
    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv(CLUSTER_MAX_GPUS_ENV, raising=False)


def profile_sweep(profile: str, *argv: str):
    """The SweepConfig and trial template a sweep script builds for ``profile`` (no Ray, no data)."""
    from sweeps.polymnist_fmean import STUDY

    from mmplatform.sweep.profiles import PROFILES
    from mmplatform.sweep.script import parse_args, sweep_config

    args = parse_args(STUDY, ["--profile", profile, *argv])
    sweep = sweep_config(STUDY, PROFILES[profile](STUDY, args), args)
    return sweep, sweep.validate_trials()


# ------------------------------------------------------------------ resources and concurrency


def test_a_trial_holds_its_driver_the_train_controller_and_its_workers():
    sweep, template = profile_sweep("smoke")
    # Driver 1 CPU + Train controller 1 CPU + 1 worker x 1 CPU.
    assert trial_resources(sweep, template) == {"CPU": 3.0}
    # Two of them fit the 8 logical CPUs of the test cluster (a third would queue as an idle driver).
    assert derive_max_concurrent_trials({"CPU": 3.0}, {"CPU": 8.0}) == 2

    sweep, template = profile_sweep("local")
    assert trial_resources(sweep, template) == {"CPU": 4.0}  # 2-CPU worker, 2 torch threads
    assert sweep.max_concurrent_trials == 1


def test_cluster_trials_split_their_gpus_over_their_workers_and_drivers_hold_no_gpu_node():
    sweep, template = profile_sweep("cluster", "--workers-per-trial", "2", "--gpus-per-trial", "1")
    assert template.scaling.use_gpu and template.scaling.gpus_per_worker == 0.5
    # The driver asks only for the CPU group's custom resource: never a CPU of a GPU node.
    assert sweep.driver_resources == {"CPU": 0.0, TRIAL_DRIVER_RESOURCE: 1.0}
    needs = trial_resources(sweep, template)
    assert needs == {"CPU": 1.0 + 2 * 4.0, "GPU": 1.0, TRIAL_DRIVER_RESOURCE: 1.0}
    # The scarcest resource decides: 4 GPUs -> 4 trials although the CPUs would hold 7.
    assert derive_max_concurrent_trials(needs, {"CPU": 64.0, "GPU": 4.0, TRIAL_DRIVER_RESOURCE: 16.0}) == 4
    assert derive_max_concurrent_trials(needs, {"CPU": 27.0, "GPU": 8.0, TRIAL_DRIVER_RESOURCE: 16.0}) == 3
    assert derive_max_concurrent_trials(needs, {"CPU": 64.0, "GPU": 8.0, TRIAL_DRIVER_RESOURCE: 2.0}) == 2

    sweep, template = profile_sweep("cluster", "--gpus-per-trial", "0")
    assert not template.scaling.use_gpu
    assert trial_resources(sweep, template) == {"CPU": 5.0, TRIAL_DRIVER_RESOURCE: 1.0}
    sweep, _ = profile_sweep("cluster", "--max-concurrent-trials", "3")
    assert sweep.max_concurrent_trials == 3


def test_concurrency_is_at_least_one_and_ignores_resources_a_trial_does_not_need():
    # A cluster too small for one trial still runs one at a time (check_against_cluster refuses
    # a trial whose workers can never fit, before Ray is asked for anything).
    assert derive_max_concurrent_trials({"CPU": 9.0, "GPU": 1.0}, {"CPU": 4.0}) == 1
    assert derive_max_concurrent_trials({"CPU": 3.0, "GPU": 0.0}, {"CPU": 9.0}) == 3
    assert derive_max_concurrent_trials({}, {"CPU": 9.0}) == 1
    # Fractional needs: 2.5 CPUs per trial on 8 CPUs -> 3 trials (floor).
    assert derive_max_concurrent_trials({"CPU": 2.5}, {"CPU": 8.0}) == 3


def test_workers_that_cannot_fit_the_cluster_are_refused_with_the_largest_that_would():
    config = build_config({"data": {"path": "/nowhere"}, "scaling": {"num_workers": 5, "cpus_per_worker": 2.0}})
    with pytest.raises(ConfigError, match=r"scaling.num_workers: 5 workers x 2.0 CPU need 10 CPUs; the cluster "
                                          r"has 8 \(at most 4 workers\)"):
        check_against_cluster(config, {"CPU": 8.0})
    check_against_cluster(config, {"CPU": 10.0})
    gpus = build_config({"data": {"path": "/nowhere"},
                         "scaling": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1.0}})
    with pytest.raises(ConfigError, match="need 2 GPUs; the cluster has 1"):
        check_against_cluster(gpus, {"CPU": 8.0, "GPU": 1.0})


def test_an_autoscaled_gpu_group_counts_with_the_gpus_it_can_scale_to(monkeypatch):
    """An idle autoscaled GPU group shows no GPUs; the sweep sizes itself on CLUSTER_MAX_GPUS.
    (The Ray cluster is the part that cannot exist here: its answer is stubbed.)"""
    from mmplatform.sweep.script import cluster_resources

    idle = {"CPU": 16.0, TRIAL_DRIVER_RESOURCE: 8.0}
    with mock.patch("mmplatform.ray_runtime.ensure_ray", return_value=dict(idle)):
        assert cluster_resources() == idle
        monkeypatch.setenv(CLUSTER_MAX_GPUS_ENV, "4")
        assert cluster_resources() == {**idle, "GPU": 4.0}
    with mock.patch("mmplatform.ray_runtime.ensure_ray", return_value={**idle, "GPU": 6.0}):
        assert cluster_resources()["GPU"] == 6.0  # more GPUs up now than the variable says


# ------------------------------------------------------------------ search-space validation


def sweep_with(space: dict):
    return build_sweep_config({"name": "s", "base": {"data": {"path": "/nowhere"}}, "search_space": space,
                               "scheduler": {"max_epochs": 2}})


@pytest.mark.parametrize("key, spec, message", [
    ("model.beta", {"type": "uniform", "low": 2.0, "high": 1.0},
     r"search_space.model.beta.uniform: .*low \(2.0\) must be below high \(1.0\)"),
    ("training.learning_rate", {"type": "loguniform", "low": 0.0, "high": 0.1},
     r"search_space.training.learning_rate.loguniform: .*needs low > 0"),
    ("model.latent_dim", {"type": "choice", "values": []}, r"search_space.model.latent_dim.choice.values: .*at least 1"),
    ("model.beta", {"type": "normal", "mean": 1.0}, r"search_space.model.beta: .*'normal'.*'choice', 'grid'"),
    ("model.beta", {"type": "uniform", "low": 1.0, "high": 2.0, "step": 0.5},
     r"search_space.model.beta.uniform.step: Extra inputs"),
    ("model.beta", {"type": "uniform", "low": 1.0}, r"search_space.model.beta.uniform.high: Field required"),
    # Keys and values are checked against the trial config itself, before Ray starts.
    ("model.betta", {"type": "uniform", "low": 1.0, "high": 2.0}, r"model.betta: Extra inputs"),
    ("model.latent_dim", {"type": "choice", "values": [-3, 16]}, r"model.latent_dim"),
    ("model.aggregator", {"type": "choice", "values": ["mopoe", "no_such_fusion"]}, r"model.aggregator"),
])
def test_bad_search_spaces_are_refused_naming_the_key(key, spec, message):
    with pytest.raises(ConfigError, match=message):
        sweep_with({key: spec})


def test_good_search_spaces_become_tune_domains():
    from ray import tune

    from mmplatform.sweep.search_space import to_param_space

    sweep = sweep_with({"model.beta": {"type": "uniform", "low": 0.5, "high": 2.0},
                        "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-3},
                        "model.latent_dim": {"type": "grid", "values": [8, 16]}})
    space = to_param_space(sweep.search_space)
    assert isinstance(space["model.beta"], tune.search.sample.Float)
    assert (space["model.beta"].lower, space["model.beta"].upper) == (0.5, 2.0)
    assert space["model.latent_dim"] == {"grid_search": [8, 16]}


@pytest.mark.parametrize("key, spec", [
    ("model.latent_dim", {"type": "choice", "values": [16, -3]}),
    ("model.latent_dim", {"type": "grid", "values": [16, 0]}),
    ("evaluation.min_classifier_score", {"type": "uniform", "low": 0.5, "high": 1.5}),
])
def test_every_searched_value_is_checked_before_ray_starts(key, spec):
    with pytest.raises(ConfigError, match=key):
        sweep_with({key: spec})


# ------------------------------------------------------------------ the objective between evaluations


def test_epochs_without_evaluation_report_the_last_evaluated_objective():
    """every_n_epochs 3 over 7 epochs: evaluated at 3, 6 and 7 (the last epoch always)."""
    evaluations = {3: {"objective": 0.25, "coherence_missing": 0.2}, 6: {"objective": 0.5}, 7: {"objective": 0.4}}
    reported, carried = [], 0.0
    for epoch in range(1, 8):
        value, carried = epoch_objective(FINISHED if epoch == 7 else RUNNING, evaluations.get(epoch), carried)
        reported.append(value)
    assert reported == [0.0, 0.0, 0.25, 0.25, 0.25, 0.5, 0.4]
    assert carried == 0.4  # what the checkpoint keeps for a resumed run


def test_an_evaluation_without_an_objective_keeps_the_carried_one():
    # objective_weights naming no metric this evaluation produced: no objective key at all.
    assert epoch_objective(RUNNING, {"log_likelihood": -5.0}, 0.3) == (0.3, 0.3)


def test_a_diverged_epoch_reports_the_worst_objective():
    assert epoch_objective(DIVERGED, None, 0.7) == (0.0, 0.0)
    assert epoch_objective(DIVERGED, {"objective": 0.9}, 0.7) == (0.0, 0.0)


# ------------------------------------------------------------------ what the user reads at the end


def test_a_sweep_whose_budget_ended_before_any_epoch_says_why_and_what_to_do():
    from mmplatform.sweep.script import ending

    sweep, _ = profile_sweep("local")
    assert sweep.time_budget_s == 750
    waiting = {"trial_id": "4a353_00000", "status": "no_result", "epoch": None, "aggregator": "mopgfm", "config": {}}
    summary = {"num_trials": 1, "trials": [waiting], "best_trial_file": None}
    text = ending(summary, sweep, "/results", "/aim", wall_s=800.0)
    assert "no trial finished an epoch within the sweep's time budget of 750 s" in text
    assert text.count("--time-budget-s 1500") == 1
    finished = {**waiting, "status": "finished", "epoch": 6}
    assert "time budget" not in ending({**summary, "trials": [finished, waiting]}, sweep, "/results", "/aim", 800.0)

    sweep, _ = profile_sweep("local", "--time-budget-s", "1500")
    assert sweep.time_budget_s == 1500
