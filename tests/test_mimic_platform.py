"""MIMIC-CXR through the whole platform, on a fixture in the official layout: the build command
(both variants, and its one-line errors), the finding classifiers, a training on Ray Train scored
by AUROC and average precision (and MMVM's random-forest probe) whose Aim run holds the aggregate
metrics and no image and no text of the credentialed data, and a smoke ASHA sweep of the f-means
against MoPoE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmplatform.config import build_config
from mmplatform.tracking import query_images, query_metrics, query_runs, query_texts, reindex
from tests.cli_fixtures import one_line_error, run_command, train_classifiers


def test_build_command_builds_both_variants_and_names_a_bad_line(mimic_source, mimic_shards, tmp_path):
    out = tmp_path / "thesis"
    completed = run_command(["data", "mimic", "--source", str(mimic_source), "--out", str(out), "--workers", "1",
                             "--samples-per-shard", "10"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    thesis = json.loads((out / "train" / "manifest.json").read_text())
    assert thesis["dataset"] == "mimic" and thesis["restricted"] is True
    assert [(m["name"], m["shape"]) for m in thesis["modalities"]] == [
        ("frontal", [1, 128, 128]), ("lateral", [1, 128, 128]), ("text", [128])]
    assert thesis["label_names"] == ["Lung Opacity", "Pleural Effusion", "Support Devices"]
    # The CLI's defaults are the builder's: the same shards as the session's build.
    assert thesis["shards"] == json.loads((mimic_shards / "train" / "manifest.json").read_text())["shards"]

    out = tmp_path / "mmvm"
    completed = run_command(["data", "mimic", "--variant", "mmvm", "--image-size", "64", "--source", str(mimic_source),
                             "--out", str(out), "--workers", "1", "--samples-per-shard", "10"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    mmvm = json.loads((out / "train" / "manifest.json").read_text())
    assert [(m["name"], m["shape"]) for m in mmvm["modalities"]] == [("frontal", [1, 64, 64]), ("lateral", [1, 64, 64])]
    assert len(mmvm["label_names"]) == 14 and mmvm["restricted"] is True

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in mimic_source.iterdir():
        (broken / item.name).symlink_to(item)
    metadata = next(mimic_source.glob("mimic-cxr-2.0.0-metadata.csv*"))
    (broken / metadata.name).unlink()
    (broken / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id\n")
    error = one_line_error(run_command(["data", "mimic", "--source", str(broken), "--out", str(tmp_path / "never")]))
    assert "mimic-cxr-2.0.0-metadata.csv" in error, error
    assert not (tmp_path / "never" / "train").exists()


@pytest.fixture(scope="module")
def mimic_classifiers(ray_cluster, mimic_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mimic-classifiers") / "classifiers"
    report = train_classifiers(ray_cluster, mimic_shards, out)
    assert report["score"] == "mean_average_precision"
    assert set(report["test_score"]) == {"frontal", "lateral", "text"}
    return out


def test_a_training_is_scored_by_auroc_and_tracks_no_image_and_no_text(
    ray_cluster, mimic_shards, mimic_classifiers, tmp_path
):
    from mmplatform.training.launcher import fit

    repo = tmp_path / "aim"
    config = build_config({
        "name": "mimic-tiny",
        "storage_path": str(tmp_path / "results"),
        "data": {"dataset": "mimic", "path": str(mimic_shards), "batch_size": 8, "steps_per_epoch": 2,
                 "loader_workers": 0, "eval_batch_size": 16},
        # Generic MLPs for the views: the residual nets are tested on their own and in the smoke sweep.
        "model": {"aggregator": "mopoe", "latent_dim": 8, "networks": {"frontal": "mlp_image", "lateral": "mlp_image"}},
        "training": {"epochs": 1},
        "evaluation": {"classifiers_dir": str(mimic_classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 40, "log_likelihood_samples": 2, "prd_clusters": 4, "prd_angles": 51,
                       "prd_runs": 1,
                       # MMVM's protocol: random forests on the (unimodal, among all) subset posteriors.
                       "probe_model": "random_forest", "probe_forest_trees": 20, "probe_forest_depth": 4},
        "scaling": {"num_workers": 1},
        "tracking": {"repo": str(repo), "experiment": "mimic-tests", "fallback_dir": str(tmp_path / "fallback")},
    })
    assert config.evaluation.metrics == ["coherence_auroc", "coherence_ap", "latent_probe_auroc", "latent_probe_ap",
                                         "prd", "log_likelihood"]  # the dataset's
    metrics = fit(config).metrics
    for key in ("coherence_auroc_missing", "coherence_ap_missing", "latent_auroc", "latent_auroc/frontal",
                "latent_ap", "prd", "log_likelihood", "objective"):
        assert key in metrics, key
    assert metrics["objective"] == pytest.approx((metrics["coherence_auroc_missing"] + 2 * metrics["prd"]) / 3)

    reindex(repo)
    assert query_metrics(repo, 'metric.name == "coherence_auroc" and metric.context.kind == "missing"')
    assert query_images(repo, "") == [] and query_texts(repo, "") == []  # credentialed data stays inside
    (run,) = query_runs(repo)
    assert run.hparams["samples_logged"] is False


def test_smoke_sweep_of_the_f_means_against_mopoe(ray_cluster, mimic_source, tmp_path, monkeypatch):
    from sweeps.mimic_fmean import STUDY

    from mmplatform.sweep.script import main

    assert "mopoe" in STUDY.aggregators
    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path))
    summary = main(STUDY, ["--profile", "smoke", "--source", str(mimic_source), "--name", "mimic-smoke",
                           "--num-samples", "2", "--max-epochs", "1", "--aggregators", "mofop,mopoe",
                           "--search-seed", "0"])
    assert summary["num_trials"] == 2
    assert all(t["error"] is None and t["epoch"] == 1 for t in summary["trials"])
    # One trial of each (search seed 0); the MoPoE trial ran without the flows' searched options.
    configs = {t["config"]["model.aggregator"]: t["config"] for t in summary["trials"]}
    assert set(configs) == {"mofop", "mopoe"}
    assert "model.aggregator_options.num_flows" in configs["mofop"]
    assert not any(key.startswith("model.aggregator_options.") for key in configs["mopoe"])
    best = summary["best"]["metrics"]
    for key in ("coherence_auroc_missing", "latent_auroc", "log_likelihood"):
        assert key in best, key
    manifest = json.loads((tmp_path / "datasets" / "mimic-smoke" / "train" / "manifest.json").read_text())
    assert manifest["dataset"] == "mimic" and manifest["restricted"] is True
