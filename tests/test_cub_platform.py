"""CUB through the whole platform, on fixtures in both official layouts: the build command (both
forms to one shard format, and its one-line errors), the colour-group classifiers gated by mean
average precision, a training on Ray Train whose evaluation scores the groups by average
precision and AUROC and logs generated captions to Aim, a smoke ASHA sweep, and the refusals of
an unlabelled build (the release) that happen before Ray starts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from mmplatform.config import build_config
from mmplatform.tracking import query_metrics, query_texts, reindex
from tests.cli_fixtures import one_line_error as _one_line_error
from tests.cli_fixtures import run_command as _run
from tests.cli_fixtures import train_classifiers


def test_build_command_builds_both_forms_to_one_format_and_names_a_bad_line(
    cub_source, cub_release_source, cub_shards, tmp_path
):
    built = {}
    for form, source in (("cub_200_2011", cub_source), ("release", cub_release_source)):
        out = tmp_path / form
        completed = _run(["data", "cub", "--source", str(source), "--out", str(out), "--workers", "1",
                          "--samples-per-shard", "20"])
        assert completed.returncode == 0, completed.stderr[-2000:]
        built[form] = json.loads((out / "train" / "manifest.json").read_text())
    labelled, release = built["cub_200_2011"], built["release"]
    assert labelled["dataset"] == release["dataset"] == "cub"
    assert labelled["modalities"] == release["modalities"]  # images, 32 word ids over the same vocabulary
    assert [m["name"] for m in labelled["modalities"]] == ["image", "text"]
    assert labelled["label_kind"] == "multi" and len(labelled["label_names"]) == 6
    assert release["label_kind"] == "none" and release["label_names"] == []
    # The CLI's defaults are the builder's: the same shards as the session's build.
    assert labelled["shards"] == json.loads((cub_shards / "train" / "manifest.json").read_text())["shards"]

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in cub_source.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "train_idx.txt").unlink()
    (broken / "train_idx.txt").write_text("1\nseven\n")
    error = _one_line_error(_run(["data", "cub", "--source", str(broken), "--out", str(tmp_path / "never")]))
    assert "train_idx.txt:2" in error, error
    assert not (tmp_path / "never" / "train").exists()


@pytest.fixture(scope="module")
def cub_classifiers(ray_cluster, cub_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cub-classifiers") / "classifiers"
    report = train_classifiers(ray_cluster, cub_shards, out)
    assert report["score"] == "mean_average_precision"
    assert set(report["test_score"]) == {"image", "text"}
    assert all(0.0 < value <= 1.0 for value in report["test_score"].values())
    return out


def test_training_scores_colour_groups_by_average_precision_and_auroc_and_logs_captions(
    ray_cluster, cub_shards, cub_classifiers, tmp_path
):
    from mmplatform.training.launcher import fit

    repo = tmp_path / "aim"
    config = build_config({
        "name": "cub-tiny",
        "storage_path": str(tmp_path / "results"),
        "data": {"dataset": "cub", "path": str(cub_shards), "batch_size": 8, "steps_per_epoch": 2,
                 "loader_workers": 0, "eval_batch_size": 20},
        # The generic MLP for the image: the shared 64x64 residual nets (43M parameters, tested on
        # their own and in the smoke sweep below) would make this test about writing checkpoints.
        "model": {"aggregator": "mopoe", "latent_dim": 8, "networks": {"image": "mlp_image"}},
        "training": {"epochs": 1},
        "evaluation": {"classifiers_dir": str(cub_classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 40, "log_likelihood_samples": 2, "prd_clusters": 4, "prd_angles": 51,
                       "prd_runs": 1},
        "scaling": {"num_workers": 1},
        "tracking": {"repo": str(repo), "experiment": "cub-tests", "fallback_dir": str(tmp_path / "fallback")},
    })
    assert config.evaluation.metrics == ["coherence_ap", "coherence_auroc", "latent_probe_ap", "latent_probe_auroc",
                                         "prd", "log_likelihood"]  # the dataset's
    metrics = fit(config).metrics
    for key in ("coherence_ap_missing", "coherence_auroc_missing", "latent_ap", "latent_auroc", "latent_auroc/text",
                "prd", "log_likelihood", "objective"):
        assert key in metrics, key
    assert 0.0 < metrics["coherence_ap_missing"] <= 1.0 and 0.0 <= metrics["coherence_auroc_missing"] <= 1.0
    groups = {key.split("/")[-1] for key in metrics if key.startswith("coherence_auroc_missing/")}
    assert groups & {"blue2red", "brown", "grey", "yellow", "black", "white"}
    assert metrics["objective"] == pytest.approx((metrics["coherence_ap_missing"] + 2 * metrics["prd"]) / 3)

    reindex(repo)
    texts = query_texts(repo, 'texts.name == "generated_text" and texts.context.modality == "text"')
    kinds = {series.context["kind"]: series.values[0] for series in texts}
    assert set(kinds) == {"conditional", "random"}
    conditional = kinds["conditional"].splitlines()
    caption = conditional[0].removeprefix("input: ")
    assert caption.split()[0] == "this" and "<pad>" not in caption  # words joined by spaces, padding dropped
    assert any(line.startswith("image_text: ") for line in conditional)
    per_group = query_metrics(repo, 'metric.name == "latent_auroc" and metric.context.kind == "all"')
    assert {s.context["attribute"] for s in per_group if "attribute" in s.context}


def test_smoke_sweep_on_cub_builds_from_source_and_ranks_trials(ray_cluster, cub_source, tmp_path, monkeypatch):
    from sweeps.cub_fmean import STUDY

    from mmplatform.sweep.script import main

    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path))
    summary = main(STUDY, ["--profile", "smoke", "--source", str(cub_source), "--name", "cub-smoke",
                           "--num-samples", "2", "--max-epochs", "1", "--aggregators", "mofop,mopgfm"])
    assert summary["num_trials"] == 2
    assert all(t["error"] is None and t["epoch"] == 1 for t in summary["trials"])
    best = summary["best"]["metrics"]
    for key in ("coherence_ap_missing", "coherence_auroc_missing", "latent_ap", "latent_auroc", "log_likelihood"):
        assert key in best, key
    manifest = json.loads((tmp_path / "datasets" / "cub-smoke" / "train" / "manifest.json").read_text())
    assert manifest["dataset"] == "cub" and manifest["label_kind"] == "multi"


def test_an_unlabelled_build_refuses_label_metrics_before_ray_starts(cub_release_source, tmp_path):
    """The release has no attribute file: the colour-group metrics (the dataset's defaults) are
    refused, naming the reason, by `mmplatform train` and by a sweep script, before Ray starts."""
    env = {"RAY_ADDRESS": "", "MMPLATFORM_DATA_ROOT": str(tmp_path)}
    started = time.monotonic()
    error = _one_line_error(_run(["sweeps/cub_fmean.py", "--profile", "smoke", "--source", str(cub_release_source)],
                                 env=env, command=[sys.executable]))
    assert "'coherence_ap'" in error and "dataset 'cub' was built without labels" in error, error
    assert "metrics that apply: log_likelihood" in error
    shards = tmp_path / "datasets" / "cub-smoke"
    assert json.loads((shards / "train" / "manifest.json").read_text())["label_kind"] == "none"  # built, kept

    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"dataset": "cub", "path": str(shards)}}))
    error = _one_line_error(_run(["train", "--config", str(config)], env=env))
    assert "needs labels" in error and "built without labels" in error
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "classifiers").exists()
    assert time.monotonic() - started < 120
