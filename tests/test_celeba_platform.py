"""CelebA through the whole platform, on a fixture in the official layout: the build command
(and its one-line errors), the coherence classifiers gated by mean average precision, a training
on Ray Train whose evaluation scores attributes by average precision and logs generated text to
Aim, a smoke ASHA sweep, and the refusals that happen before Ray starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmplatform.config import build_config
from mmplatform.tracking import query_images, query_metrics, query_texts, reindex
from tests.cli_fixtures import run_command as _run
from tests.cli_fixtures import train_classifiers


def test_build_command_builds_the_official_layout_and_names_a_bad_line(celeba_source, celeba_shards, tmp_path):
    out = tmp_path / "built"
    completed = _run(["data", "celeba", "--source", str(celeba_source), "--out", str(out), "--workers", "1",
                      "--samples-per-shard", "16"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    built = json.loads((out / "train" / "manifest.json").read_text())
    assert built["dataset"] == "celeba" and built["label_kind"] == "multi" and len(built["label_names"]) == 40
    assert [m["name"] for m in built["modalities"]] == ["image", "text"]
    # The CLI's defaults are the builder's: the same shards as the session's build.
    assert built["shards"] == json.loads((celeba_shards / "train" / "manifest.json").read_text())["shards"]

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in celeba_source.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "list_attr_celeba.txt").unlink()
    lines = (celeba_source / "list_attr_celeba.txt").read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # one value short
    (broken / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    completed = _run(["data", "celeba", "--source", str(broken), "--out", str(tmp_path / "never")])
    assert completed.returncode == 2
    error = completed.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "list_attr_celeba.txt:5: 39 values for 000003.jpg, expected 40" in error
    assert not (tmp_path / "never" / "train").exists()


@pytest.fixture(scope="module")
def celeba_classifiers(ray_cluster, celeba_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("celeba-classifiers") / "classifiers"
    report = train_classifiers(ray_cluster, celeba_shards, out)
    assert report["score"] == "mean_average_precision"
    assert set(report["test_score"]) == {"image", "text"}
    assert all(0.0 < value <= 1.0 for value in report["test_score"].values())
    return out


def test_classifiers_below_the_average_precision_gate_are_refused_before_ray(celeba_shards, celeba_classifiers, tmp_path):
    from mmplatform.coherence_classifiers import ClassifierError
    from mmplatform.training.launcher import preflight

    stored = json.loads((celeba_classifiers / "classifiers.json").read_text())
    config = build_config({"data": {"dataset": "celeba", "path": str(celeba_shards)},
                           "evaluation": {"classifiers_dir": str(celeba_classifiers), "min_classifier_score": 1.0}})
    with pytest.raises(ClassifierError, match=r"min_classifier_score=1.0 \(test mean_average_precision\)"):
        preflight(config)
    assert stored["score"] == "mean_average_precision"


def test_training_scores_attributes_by_average_precision_and_logs_text(
    ray_cluster, celeba_shards, celeba_classifiers, tmp_path
):
    from mmplatform.training.launcher import fit

    repo = tmp_path / "aim"
    config = build_config({
        "name": "celeba-tiny",
        "storage_path": str(tmp_path / "results"),
        "data": {"dataset": "celeba", "path": str(celeba_shards), "batch_size": 8, "steps_per_epoch": 2,
                 "loader_workers": 0, "eval_batch_size": 16},
        # The generic MLP networks: MoPoE's CelebA nets (70M parameters, tested on their own and in the
        # smoke sweep below) would make this test about writing 0.8 GB checkpoints.
        "model": {"aggregator": "mopoe", "latent_dim": 8, "style_latent_dim": 4, "style_beta": {"text": 2.0},
                  "networks": {"image": "mlp_image", "text": "mlp_text"}},
        "training": {"epochs": 1},
        "evaluation": {"classifiers_dir": str(celeba_classifiers), "min_classifier_score": 0.0,
                       "probe_train_samples": 32, "log_likelihood_samples": 2, "prd_clusters": 4, "prd_angles": 51,
                       "prd_runs": 1},
        "scaling": {"num_workers": 1},
        "tracking": {"repo": str(repo), "experiment": "celeba-tests", "fallback_dir": str(tmp_path / "fallback")},
    })
    assert config.evaluation.metrics == ["coherence_ap", "latent_probe_ap", "prd", "log_likelihood"]  # the dataset's
    result = fit(config)
    metrics = result.metrics
    for key in ("coherence_ap_missing", "coherence_ap_reconstruction", "latent_ap", "latent_ap/image_text",
                "prd", "log_likelihood", "train/style_divergence/text", "objective"):
        assert key in metrics, key
    assert 0.0 < metrics["coherence_ap_missing"] <= 1.0 and 0.0 < metrics["latent_ap"] <= 1.0
    assert any(key.startswith("coherence_ap_missing/") and key.split("/")[-1] in ("Smiling", "Male", "Young")
               for key in metrics)
    assert metrics["objective"] == pytest.approx(
        (metrics["coherence_ap_missing"] + 2 * metrics["prd"]) / 3)  # the descriptor's weights

    reindex(repo)
    texts = query_texts(repo, 'texts.name == "generated_text" and texts.context.modality == "text"')
    kinds = {series.context["kind"]: series.values[0] for series in texts}
    assert set(kinds) == {"conditional", "random"}
    conditional = kinds["conditional"].splitlines()
    assert conditional[0].startswith("input: ") and any(line.startswith("image_text: ") for line in conditional)
    assert "*" not in conditional[0].removeprefix("input: ").strip("*")[:1]  # padding stripped
    images = query_images(repo, 'images.name == "generations" and images.context.modality == "image"')
    assert {series.context["kind"] for series in images} == {"conditional", "random"}
    per_attribute = query_metrics(repo, 'metric.name == "coherence_ap" and metric.context.kind == "missing"')
    assert len({s.context.get("attribute") for s in per_attribute if "attribute" in s.context}) >= 10


def test_smoke_sweep_on_celeba_builds_from_source_and_ranks_trials(ray_cluster, celeba_source, tmp_path, monkeypatch):
    from sweeps.celeba_baselines import STUDY

    from mmplatform.sweep.script import main

    monkeypatch.setenv("MMPLATFORM_DATA_ROOT", str(tmp_path))
    summary = main(STUDY, ["--profile", "smoke", "--source", str(celeba_source), "--name", "celeba-smoke",
                           "--num-samples", "2", "--max-epochs", "1", "--aggregators", "mopoe,poe"])
    assert summary["num_trials"] == 2
    assert all(t["error"] is None and t["epoch"] == 1 for t in summary["trials"])
    best = summary["best"]["metrics"]
    assert "coherence_ap_missing" in best and "latent_ap" in best and "log_likelihood" in best
    manifest = json.loads((tmp_path / "datasets" / "celeba-smoke" / "train" / "manifest.json").read_text())
    assert manifest["dataset"] == "celeba"


def test_a_multi_label_metric_misuse_is_refused_before_ray_starts(celeba_shards, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"dataset": "celeba", "path": str(celeba_shards)},
                                  "evaluation": {"metrics": ["latent_probe"]}}))
    started = time.monotonic()
    completed = _run(["train", "--config", str(config)], env={"RAY_ADDRESS": "", "MMPLATFORM_DATA_ROOT": str(tmp_path)})
    assert completed.returncode == 2, completed.stderr[-2000:]
    error = completed.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "'latent_probe'" in error and "'celeba'" in error and "latent_probe_ap" in error
    assert not (tmp_path / "ray_results").exists()  # nothing of a run was created
    assert time.monotonic() - started < 60
