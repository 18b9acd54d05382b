"""Aim at the scale of the card: thousands of platform runs in one repo (GitHub issue 16, item 5).

Writes ``--runs`` runs into a fresh local Aim repo through the platform's own tracking path
(``mmplatform.training.run_tracking.open_tracker`` -> ``TrainingTracker.log_epoch`` / ``finish``
-> ``mmplatform.tracking.Tracker``), each shaped like a trial of ``sweeps/polymnist_fmean.py``:

- hparams: the trial's ``TrainConfig`` from the real sweep config (``SweepConfig.trial_config`` of
  the ``local`` or ``cluster`` profile, search space sampled with a seeded generator, the aggregator
  round-robin), so ``config.flat_hparams()`` is exactly what a trial records;
- metrics: the records of one real training step and one real evaluation pass of that config's
  model (``MultimodalVAE`` built by the platform's model factory, the platform's ``Evaluator``
  with its accumulators, untrained classifiers, a few inputs): the same names and contexts a trial
  logs per epoch, none written here; per run and epoch their values are perturbed;
- images: the generation grids the platform renders (``EvaluationSession._generated_samples``),
  logged by ``log_epoch`` on the epochs its policy logs them;
- evaluated epochs as the worker decides (``every_n_epochs`` of the profile, and the last); some
  runs diverge (summary status ``diverged``); the summary is the worker's final metrics.

Then the repo is reindexed (``mmplatform.tracking.reindex``), every query the README documents is
timed through ``mmplatform.tracking.query`` (runs and series returned, checked against what was
written), ``du`` gives the repo size, and ``aim up`` serves the repo on a free loopback port: its
search API is timed over HTTP, and its runs page and metrics explorer are loaded in headless
Chromium (Chrome DevTools protocol), timed until the page shows run rows / a chart. Without
Chromium the result says ``"chromium not installed"``.

    .venv/bin/python benchmarks/aim_scale.py                  # 2,000 runs
    .venv/bin/python benchmarks/aim_scale.py --smoke          # 6 runs, for tests
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._report import emit, machine_facts, parse_with_smoke  # noqa: E402

AGGREGATORS = ("mofop", "mopgfm", "mogfm_amortized", "iwmogfm")
"""``sweeps/polymnist_fmean.py``'s f-means, every one sampled (``--aggregators``), round-robin."""
DIVERGE_EVERY = 13
"""Run ``i`` with ``i % DIVERGE_EVERY == 2`` diverges halfway (the guard's ``diverged`` status)."""
LISTED_RUNS = 50
"""Up to this many runs, the result lists every run written (what the tests recount the queries from)."""
SMOKE = {"runs": 6, "epochs": 3, "sweeps": 2, "workers": 1, "page_timeout_s": 60.0, "long_epochs": 5,
         "long_profile": "local"}


# ---------------------------------------------------------------- what a trial is


def study():
    """``sweeps/polymnist_fmean.py``'s study, loaded from the script (its latent sizes live there)."""
    spec = importlib.util.spec_from_file_location("polymnist_fmean", REPO_ROOT / "sweeps" / "polymnist_fmean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STUDY


def sweep_names(count: int) -> list[tuple[str, str]]:
    """``(sweep name, profile)``: the first sweep is ``make run``'s (``local``), the others cluster sweeps."""
    names = [("polymnist_fmean-local", "local")]
    names += [(f"polymnist_fmean-cluster-{k}", "cluster") for k in range(1, count)]
    return names[:count]


def sweep_config(name: str, profile: str, seed: int):
    from mmplatform.sweep.profiles import PROFILES
    from mmplatform.sweep.script import parse_args, sweep_config as build

    the_study = study()
    args = parse_args(the_study, ["--profile", profile, "--name", name, "--aggregators", ",".join(AGGREGATORS),
                                  "--seed", str(seed)])
    return build(the_study, PROFILES[profile](the_study, args), args)


def sample(space: dict, rng) -> dict[str, Any]:
    from mmplatform.sweep.search_space import Choice, Grid, LogUniform, Uniform

    values = {}
    for key, spec in space.items():
        if isinstance(spec, (Choice, Grid)):
            values[key] = spec.values[int(rng.integers(len(spec.values)))]
        elif isinstance(spec, LogUniform):
            values[key] = float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
        elif isinstance(spec, Uniform):
            values[key] = float(rng.uniform(spec.low, spec.high))
        else:
            raise TypeError(f"{key}: cannot sample {type(spec).__name__}")
    return values


def trial_configs(runs: int, sweeps: int, epochs: int, repo: Path, storage: Path) -> list[dict[str, Any]]:
    """Every run's TrainConfig (as JSON) with its plan: which epochs it lives, whether it diverges."""
    import numpy as np

    from mmplatform.sweep.config import AGGREGATOR_KEY

    rng = np.random.default_rng(0)
    configs = {sweep: sweep_config(sweep, profile, seed) for seed, (sweep, profile) in enumerate(sweep_names(sweeps))}
    names = list(configs)
    experiment_ids = {name: f"{rng.integers(16 ** 8):08x}" for name in names}
    plans = []
    for index in range(runs):
        name = names[index % len(names)]
        sweep = configs[name]
        sampled = sample(sweep.search_space, rng)
        sampled[AGGREGATOR_KEY] = AGGREGATORS[index % len(AGGREGATORS)]
        trial_id = f"{experiment_ids[name]}_{index // len(names):05d}"  # Tune's form
        config = sweep.trial_config(sampled, trial_id)
        config = config.model_copy(update={
            "storage_path": str(storage),
            "training": config.training.model_copy(update={"epochs": epochs}),
            "tracking": config.tracking.model_copy(update={"repo": str(repo), "fallback_dir": str(storage / "fallback")}),
        })
        diverges_at = max(1, epochs // 2) if index % DIVERGE_EVERY == 2 else None
        plans.append({"index": index, "sweep": name, "config": config.model_dump(mode="json"), "diverges_at": diverges_at})
    return plans


# ---------------------------------------------------------------- what a trial logs per epoch


def _manifest(config):
    from data_pipelines.manifest import Manifest
    from data_pipelines.modality import ModalitySpec

    specs = tuple(ModalitySpec(name=name, kind="image", shape=(3, 28, 28), dtype="uint8", likelihood="laplace")
                  for name in config.data.modalities)
    return Manifest(dataset="polymnist", version="1", split="train", modalities=specs, label_kind="single",
                    label_names=tuple("0123456789"), num_samples=64, samples_per_shard=64, shards=())


class _Batch:
    def __init__(self, inputs, labels, keys):
        self.inputs, self.labels, self.keys = inputs, labels, keys


def _inputs(modalities, count: int, seed: int):
    """Digit-like inputs: a smooth blob on a smooth background (compresses like PolyMNIST, unlike noise)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 3, 7, 7, generator=generator)
    background = torch.nn.functional.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    inputs = {}
    for m, name in enumerate(modalities):
        centre = torch.rand(count, 2, generator=generator) * 10 + 9
        blob = torch.exp(-((x - centre[:, :1, None]) ** 2 + (y - centre[:, 1:, None]) ** 2) / 18.0)
        inputs[name] = (background.roll(m, dims=1) * 0.6 + blob[:, None] * 0.8).clamp(0, 1)
    return inputs


def epoch_template(config_json: dict[str, Any]):
    """``(train_records, evaluation outcome)`` of one epoch of this config's trial: a real forward and
    backward of the platform's model, a real evaluation pass, the generation grids the session renders."""
    import types

    import torch

    from mmplatform.config import TrainConfig
    from mmplatform.coherence_classifiers import _classifier_bank
    from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator
    from mmplatform.evaluation.results import MetricRecord
    from mmplatform.evaluation.session import EvaluationOutcome, EvaluationSession, objective
    from mmplatform.training.model_factory import build_model
    from mmplatform.training.worker import TRAIN_CONTEXT

    torch.manual_seed(0)
    config = TrainConfig.model_validate(config_json)
    # Small networks: the names and contexts logged depend on the modalities, subsets and metrics,
    # not on the latent size or the flows' width (a 1280-wide flow takes seconds to build).
    model_section = config.model.model_copy(update={
        "latent_dim": 16,
        "aggregator_options": {**config.model.aggregator_options,
                               **({"coupling_width": 16} if "coupling_width" in config.model.aggregator_options else {})},
    })
    config = config.model_copy(update={"model": model_section})
    manifest = _manifest(config)
    model = build_model(config, manifest)
    count = 16
    inputs = _inputs(config.data.modalities, count, seed=0)
    labels = torch.arange(count) % 10
    output = model(inputs)
    output.loss.backward()
    train_records = [
        MetricRecord(name, float(value), {**TRAIN_CONTEXT, "modality": modality} if modality else TRAIN_CONTEXT)
        for (name, modality), value in output.logged().items()
    ]
    train_records.append(MetricRecord("bad_steps", 0.0, TRAIN_CONTEXT))

    bank = _classifier_bank(manifest)
    # Small counts so that the pass takes seconds; PRD's clusters must fit the samples it keeps.
    options = EvaluationOptions.from_config(
        config.evaluation, seed=0, label_kind="single", label_names=manifest.label_names,
        prd_modalities=tuple(config.data.modalities), probe_train_samples=count, random_coherence_samples=count,
        prd_samples=count, log_likelihood_samples=2,
        prd=EvaluationOptions.from_config(config.evaluation).prd.__class__(
            num_clusters=4, num_angles=config.evaluation.prd_angles, num_runs=1, seed=0,
            clustering=config.evaluation.prd_clustering),
    )
    evaluator = Evaluator(options, dict(bank.items()))
    batches = [_Batch(inputs, labels, [str(i) for i in range(count)])]
    result = evaluator.evaluate(model, batches, batches)
    value = objective(result.scalars(), config.evaluation.objective_weights)
    if value is not None:
        result.records.append(MetricRecord("objective", value, {"split": "test"}))
    session = types.SimpleNamespace(model=model, image_modalities=tuple(config.data.modalities),
                                    text_modalities={}, decode_text=None, unconditional_generation=True)
    samples = EvaluationSession._generated_samples(session, [_Batch(inputs, labels, [])])
    return train_records, EvaluationOutcome(result, samples)


# ---------------------------------------------------------------- writing the runs


def _perturbed(records, rng, epoch: int):
    """The template's records with values that move with the epoch and the run (same names, contexts)."""
    from mmplatform.evaluation.results import MetricRecord

    drift = 1.0 + 0.02 * epoch
    return [MetricRecord(r.name, float(r.value * drift * rng.uniform(0.9, 1.1)) if r.name != "evaluated_samples"
                         else r.value, r.context) for r in records]


def write_runs(plans: list[dict[str, Any]], every_evaluation: bool = False) -> dict[str, Any]:
    """Write ``plans``' runs, one after the other, through the platform's tracking path.

    ``every_evaluation``: track the generated samples of every evaluation, as the platform did
    before ``run_tracking.samples_tracked`` (the baseline of :func:`long_run_comparison`)."""
    import numpy as np

    from mmplatform.config import TrainConfig
    from mmplatform.evaluation.session import EvaluationOutcome
    from mmplatform.evaluation.results import EvaluationResult
    from mmplatform.training.divergence import DIVERGED, FINISHED, RUNNING
    from mmplatform.training.run_tracking import open_tracker
    from mmplatform.training.worker import epoch_objective

    templates: dict[tuple[str, str], Any] = {}
    written = []
    template_s = 0.0
    start = time.perf_counter()
    for plan in plans:
        config = TrainConfig.model_validate(plan["config"])
        # The names and contexts depend on the profile (its metrics), not on which f-mean aggregates.
        key = plan["sweep"].split("-")[1]
        if key not in templates:
            began = time.perf_counter()
            templates[key] = epoch_template(plan["config"])
            template_s += time.perf_counter() - began
        train_template, evaluation_template = templates[key]
        rng = np.random.default_rng(plan["index"])
        tracker = open_tracker(config, None, samples_logged=True)
        if every_evaluation:
            tracker.epochs = None
        last_objective, metrics, epochs, evaluations = 0.0, None, config.training.epochs, 0
        for epoch in range(1, epochs + 1):
            train_records = _perturbed(train_template, rng, epoch)
            diverged = plan["diverges_at"] == epoch
            status = DIVERGED if diverged else (FINISHED if epoch == epochs else RUNNING)
            metrics = {record.flat_name: record.value for record in train_records}
            metrics.update(epoch=epoch, status=status, bad_steps=0, skipped_steps=0.0)
            evaluated = status != DIVERGED and (epoch % config.evaluation.every_n_epochs == 0 or epoch == epochs)
            results = None
            if evaluated:
                results = EvaluationOutcome(EvaluationResult(_perturbed(evaluation_template.records, rng, epoch)),
                                            evaluation_template.samples)
                metrics.update(results.scalars())
                evaluations += 1
            metrics["objective"], last_objective = epoch_objective(
                status, results.scalars() if results is not None else None, last_objective)
            tracker.log_epoch(epoch, train_records, results)
            if diverged:
                break
        tracker.finish(metrics)
        tracker.close()
        written.append({"index": plan["index"], "run_hash": tracker.run_hash, "sweep": plan["sweep"],
                        "hparams": tracker.tracker.hparams, "status": metrics["status"], "epochs": metrics["epoch"],
                        "evaluations": evaluations})
    return {"runs": written, "seconds": time.perf_counter() - start, "template_seconds": template_s}


def write_all(plans: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    if workers <= 1:
        return write_runs(plans)
    import multiprocessing

    chunks = [plans[k::workers] for k in range(workers)]
    # Spawned, not forked: a process forked after Aim opened a repo here inherits RocksDB without its
    # background threads, and its first memtable flush then waits forever (seen: every writer stalled).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(write_runs, chunks))
    runs = sorted((run for part in parts for run in part["runs"]), key=lambda run: run["index"])
    return {"runs": runs, "seconds": max(p["seconds"] for p in parts),
            "template_seconds": sum(p["template_seconds"] for p in parts)}


def long_run_comparison(plans: list[dict[str, Any]], epochs: int, work: Path, profile: str = "cluster") -> dict[str, Any]:
    """One trial of ``profile`` trained ``epochs`` epochs (evaluated every ``every_n_epochs``), written into
    its own repo twice: samples at every evaluation (the platform before) and at the epochs
    ``samples_tracked`` picks (now). Repo bytes and write seconds of each."""
    from mmplatform.config import TrainConfig

    plan = next(p for p in plans if p["sweep"].split("-")[1] == profile)
    rows = {}
    for label, every in (("every_evaluation", True), ("platform_policy", False)):
        repo = work / f"long_{label}"
        config = TrainConfig.model_validate(plan["config"])
        config = config.model_copy(update={
            "training": config.training.model_copy(update={"epochs": epochs}),
            "tracking": config.tracking.model_copy(update={"repo": str(repo)}),
            "name": f"{config.name}-{label}",
        })
        single = {**plan, "config": config.model_dump(mode="json"), "diverges_at": None}
        written = write_runs([single], every_evaluation=every)
        rows[label] = {"repo_bytes": du_bytes(repo), "write_s": round(written["seconds"] - written["template_seconds"], 2)}
        shutil.rmtree(repo, ignore_errors=True)
    every_n = TrainConfig.model_validate(plan["config"]).evaluation.every_n_epochs
    return {"profile": profile, "epochs": epochs, "every_n_epochs": every_n, "evaluations": epochs // every_n + (epochs % every_n > 0),
            **rows, "size_ratio": round(rows["platform_policy"]["repo_bytes"] / rows["every_evaluation"]["repo_bytes"], 3)}


# ---------------------------------------------------------------- the README's queries


def readme_queries(runs: list[dict[str, Any]], local_sweep: str) -> list[dict[str, Any]]:
    """The README's example queries (its "Every run carries flat hparams" paragraph), with the
    number of runs (and series) each must return, counted from what was written."""
    from mmplatform.training.divergence import DIVERGED

    # A run that diverged before its first evaluated epoch has no coherence, latent accuracy or images.
    evaluated_hashes = {run["run_hash"] for run in runs if run["evaluations"] > 0}
    modalities = 3  # PolyMNIST-3 (the study's modalities)
    return [
        {"kind": "runs", "query": 'run.hparams.aggregator == "mopgfm" and run.hparams.beta > 1',
         "runs": sum(1 for r in runs if r["hparams"]["aggregator"] == "mopgfm" and r["hparams"]["beta"] > 1)},
        {"kind": "runs", "query": f'run.hparams.sweep == "{local_sweep}" and run.summary.status == "diverged"',
         "runs": sum(1 for r in runs if r["sweep"] == local_sweep and r["status"] == DIVERGED)},
        {"kind": "runs", "query": f'run.experiment == "{local_sweep}" and run.hparams.aggregator == "mofop"',
         "runs": sum(1 for r in runs if r["sweep"] == local_sweep and r["hparams"]["aggregator"] == "mofop")},
        {"kind": "metrics",
         "query": 'metric.name == "coherence" and metric.context.kind == "missing"',
         "runs": len(evaluated_hashes), "series": len(evaluated_hashes)},  # the mean over the missing pairs
        {"kind": "metrics", "query": 'metric.name == "latent_accuracy" and metric.context.subset == "m0"',
         "runs": len(evaluated_hashes), "series": len(evaluated_hashes)},
        {"kind": "images", "query": 'images.name == "generations" and images.context.kind == "conditional"',
         "runs": len(evaluated_hashes), "series": modalities * len(evaluated_hashes)},
    ]


def time_queries(repo: Path, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from mmplatform.tracking import query_images, query_metrics, query_runs

    functions = {"runs": query_runs, "metrics": query_metrics, "images": query_images}
    timed = []
    for entry in queries:
        start = time.perf_counter()
        records = functions[entry["kind"]](repo, entry["query"])
        seconds = time.perf_counter() - start
        got_runs = len({record.run_hash for record in records})
        row = {**entry, "expected_runs": entry["runs"], "returned_runs": got_runs, "seconds": round(seconds, 3)}
        del row["runs"]
        if "series" in entry:
            row["expected_series"] = row.pop("series")
            row["returned_series"] = len(records)
            row["points"] = sum(len(record.steps) for record in records)
        row["ok"] = got_runs == entry["runs"] and row.get("returned_series") == row.get("expected_series")
        timed.append(row)
        print(f"  {seconds:8.2f} s  {got_runs:5d} runs  {entry['query']}", file=sys.stderr, flush=True)
    return timed


def series_per_run(repo: Path, run_hash: str) -> dict[str, int]:
    """The sequences one run holds, by type: what Aim's runs page ships for every run it lists."""
    from aim import Repo

    info = Repo.from_path(str(repo)).get_run(run_hash).collect_sequence_info(["metric", "images", "texts"])
    return {kind: len(sequences) for kind, sequences in info.items()}


def du_bytes(path: Path) -> int:
    completed = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(completed.stdout.split()[0])


def repo_breakdown(repo: Path) -> dict[str, int]:
    """Bytes per top-level part of the ``.aim`` folder (meta, seqs, locks ...)."""
    aim = repo / ".aim"
    return {child.name: du_bytes(child) for child in sorted(aim.iterdir()) if child.is_dir()}


# ---------------------------------------------------------------- aim up, its API and its pages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_aim_up(repo: Path, log: Path, timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    """``aim up`` on a free loopback port; returns it, its URL and the seconds until it served its
    start page.

    The probe asks for the start page, which reads nothing from the repo. Probing an API instead
    measured this script: ``/api/projects/`` opens every run's store (about 10 s at 2,000 runs on
    2 cores), so a probe with a 2 s deadline never saw an answer, and each abandoned probe left
    the server one more request opening 2,000 stores (12 GB in its two workers after 300 s)."""
    from mmplatform.tracking.query import aim_executable

    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen([aim_executable(), "up", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(port),
                                "--yes"], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"aim up exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/", timeout=2) as response:
                response.read()
            return process, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"aim up did not answer within {timeout_s} s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    """End a process this script started, and its children (its own session), by its id."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, 15)
        except ProcessLookupError:
            return
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def time_api(url: str, path: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One API call of the UI, read to the end of its stream."""
    full = f"{url}{path}?{urllib.parse.urlencode(params)}"
    start = time.perf_counter()
    with urllib.request.urlopen(full, timeout=timeout_s) as response:
        body = response.read()
    return {"path": path, "params": params, "seconds": round(time.perf_counter() - start, 3), "bytes": len(body)}


def aim64(state: dict[str, Any]) -> str:
    """The UI's URL encoding of an explorer's state ("O-" + base64url of the URI-encoded JSON)."""
    text = urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="~@#$&()*!+=:;,.?/'")
    return "O-" + base64.b64encode(text.encode()).decode().rstrip("=").replace("+", "-").replace("/", "_")


def find_chromium(requested: str | None) -> str | None:
    if requested == "none":
        return None
    if requested:
        return requested if Path(requested).exists() or shutil.which(requested) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


PAGE_CHECKS = {
    # Run rows: the runs table's name cells (every run written here is named after the study).
    "runs": "(() => { const walker = document.createTreeWalker(document.body || document, NodeFilter.SHOW_TEXT);"
            " let rows = 0; while (walker.nextNode()) { if (/^polymnist_fmean-[^ ]+\\/\\S+ \\w+$/.test("
            "walker.currentNode.nodeValue.trim())) rows++; } return rows; })()",
    # A chart: the line chart's SVG paths, one per series.
    "metrics": "document.querySelectorAll('svg path.Line, svg [class*=\"Line\"] path, svg path[class*=\"line\" i]')"
               ".length",
}


async def _load_page(ws_url: str, page_url: str, check: str, timeout_s: float) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10 ** 9))

            async def call(method: str, **params):
                call_id = next(ids)
                await ws.send_json({"id": call_id, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == call_id:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})

            await call("Page.enable")
            start = time.perf_counter()
            await call("Page.navigate", url=page_url)
            found, elements = None, 0
            while time.perf_counter() - start < timeout_s:
                result = await call("Runtime.evaluate", expression=check, returnByValue=True)
                elements = result.get("result", {}).get("value") or 0
                if elements > 0:
                    found = time.perf_counter() - start
                    break
                await asyncio_sleep(0.1)
            text = await call("Runtime.evaluate", expression="document.body ? document.body.innerText.slice(0, 400) : ''",
                              returnByValue=True)
            return {"url": page_url, "rendered": found is not None,
                    "seconds": round(found, 3) if found is not None else None, "elements": elements,
                    "text_start": text.get("result", {}).get("value", "")}


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def load_pages(chromium: str, pages: dict[str, str], timeout_s: float, work: Path) -> dict[str, Any]:
    """Each page in a fresh tab of one headless Chromium (DevTools protocol), timed from navigation
    until its check finds content (run rows, chart lines)."""
    import asyncio

    port = free_port()
    profile = work / "chromium-profile"
    process = subprocess.Popen(
        [chromium, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         "--window-size=1600,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=(work / "chromium.log").open("w"), start_new_session=True,
    )
    try:
        deadline = time.perf_counter() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2) as response:
                    json.loads(response.read())
                break
            except OSError:
                if time.perf_counter() > deadline or process.poll() is not None:
                    raise RuntimeError(f"chromium did not start: {(work / 'chromium.log').read_text()[-2000:]}")
                time.sleep(0.2)
        results = {}
        for name, page_url in pages.items():
            request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
            with urllib.request.urlopen(request, timeout=10) as response:
                target = json.loads(response.read())
            results[name] = asyncio.run(_load_page(target["webSocketDebuggerUrl"], page_url, PAGE_CHECKS[name.split(":")[0]],
                                                   timeout_s))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/close/{target['id']}", timeout=10):
                pass
        return results
    finally:
        stop(process)


def ui_section(repo: Path, work: Path, chromium_arg: str | None, timeout_s: float) -> dict[str, Any]:
    process, url, startup_s = start_aim_up(repo, work / "aim_up.log", timeout_s=max(120.0, timeout_s))
    try:
        metric_query = 'metric.name == "latent_accuracy" and metric.context.subset == "m0"'
        api = {
            # What every page asks first (the project, which checks every run's store for corruption).
            "project": time_api(url, "/api/projects/", {}, timeout_s),
            # What the runs page asks next (a page of 45 runs), and the whole table.
            "runs_page_45": time_api(url, "/api/runs/search/run/", {"q": "", "limit": 45}, timeout_s),
            "runs_all": time_api(url, "/api/runs/search/run/", {"q": ""}, timeout_s),
            "runs_query": time_api(url, "/api/runs/search/run/",
                                   {"q": 'run.hparams.aggregator == "mopgfm" and run.hparams.beta > 1'}, timeout_s),
            "metrics_query": time_api(url, "/api/runs/search/metric/", {"q": metric_query, "p": 50}, timeout_s),
        }
        chromium = find_chromium(chromium_arg)
        if chromium is None:
            pages: Any = "chromium not installed"
        else:
            select = {"options": [], "query": "", "advancedMode": True, "advancedQuery": metric_query}
            pages = load_pages(chromium, {
                "runs": f"{url}/runs",
                "metrics": f"{url}/metrics?select={aim64(select)}",
            }, timeout_s, work)
        return {"aim_up_startup_s": round(startup_s, 3), "api": api, "pages": pages, "chromium": chromium}
    finally:
        stop(process)


# ---------------------------------------------------------------- main


def table(result: dict[str, Any]) -> str:
    lines = [f"aim_scale: {result['settings']['runs']} runs x {result['settings']['epochs']} epochs, "
             f"repo {result['repo_mb']} MB ({result['repo_kb_per_run']} kB/run), written in {result['write_s']} s, "
             f"series per run {result['series_per_run']}",
             f"{'seconds':>9}  {'runs':>6}  {'expected':>8}  what"]
    for row in result["queries"]:
        lines.append(f"{row['seconds']:9.2f}  {row['returned_runs']:6d}  {row['expected_runs']:8d}  "
                     f"SDK {row['kind']}: {row['query']}")
    ui = result["ui"]
    for name, row in ui["api"].items():
        lines.append(f"{row['seconds']:9.2f}  {'':6}  {'':8}  API {name} ({row['bytes'] / 1e6:.1f} MB)")
    if isinstance(ui["pages"], dict):
        for name, row in ui["pages"].items():
            seconds = f"{row['seconds']:9.2f}" if row["seconds"] is not None else "    never"
            lines.append(f"{seconds}  {'':6}  {'':8}  page {name} ({row['elements']} elements)")
    else:
        lines.append(f"{'':9}  {'':6}  {'':8}  pages: {ui['pages']}")
    long_run = result.get("long_run")
    if long_run:
        for label in ("every_evaluation", "platform_policy"):
            row = long_run[label]
            lines.append(f"{row['write_s']:9.2f}  {'':6}  {'':8}  one {long_run['epochs']}-epoch trial, samples at "
                         f"{label.replace('_', ' ')}: {row['repo_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run (the profiles evaluate as they do)")
    parser.add_argument("--sweeps", type=int, default=8, help="sweeps the runs are spread over (one local)")
    parser.add_argument("--workers", type=int, default=2, help="processes writing runs")
    parser.add_argument("--long-epochs", type=int, default=500,
                        help="epochs of the one trial written with and without the sample policy (0: skip)")
    parser.add_argument("--long-profile", choices=["cluster", "local"], default="cluster",
                        help="the profile of that trial (how often it evaluates)")
    parser.add_argument("--pair-breakdowns", action="store_true",
                        help="track the per-(subset, modality) series too (tracking.pair_breakdowns; the shape "
                             "every run had before it was off by default)")
    parser.add_argument("--chromium", default=None, help="browser binary; 'none' to skip the pages")
    parser.add_argument("--page-timeout-s", type=float, default=300.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the repo is written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (repo included)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "aim_scale.json"))
    args = parse_with_smoke(parser, SMOKE, argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aim_scale_", dir=args.work_dir))
    # Everything the platform would put under its data root stays in the work dir.
    os.environ["MMPLATFORM_DATA_ROOT"] = str(work / "data_root")
    for key in ("MMPLATFORM_DATASETS_DIR", "MMPLATFORM_RESULTS_DIR", "MMPLATFORM_AIM_REPO"):
        os.environ.pop(key, None)
    repo = work / "aim"
    try:
        from mmplatform.tracking import create_local_repo, reindex

        began = time.perf_counter()
        plans = trial_configs(args.runs, args.sweeps, args.epochs, repo, work / "storage")
        for plan in plans:
            plan["config"]["tracking"]["pair_breakdowns"] = args.pair_breakdowns
        create_local_repo(repo)
        print(f"writing {args.runs} runs with {args.workers} processes", file=sys.stderr, flush=True)
        written = write_all(plans, args.workers)
        write_s = time.perf_counter() - began
        size = du_bytes(repo)
        # Each figure as soon as it exists: a later step that fails (aim up on a huge repo) keeps them.
        print(f"written in {write_s:.0f} s, repo {size / 1e6:.0f} MB", file=sys.stderr, flush=True)
        start = time.perf_counter()
        reindex(repo, timeout_s=3600)
        reindex_s = time.perf_counter() - start
        print(f"reindexed in {reindex_s:.0f} s", file=sys.stderr, flush=True)
        runs = written["runs"]
        series = series_per_run(repo, runs[0]["run_hash"])
        print(f"series per run: {series}", file=sys.stderr, flush=True)
        queries = time_queries(repo, readme_queries(runs, sweep_names(args.sweeps)[0][0]))
        try:
            ui = ui_section(repo, work, args.chromium, args.page_timeout_s)
        except RuntimeError as error:  # aim up never answered: a result, not a crash
            ui = {"error": str(error).splitlines()[0], "api": {}, "pages": "aim up did not answer", "chromium": None}
        long_run = long_run_comparison(plans, args.long_epochs, work, args.long_profile) if args.long_epochs > 0 else None
        images = sum(len(plan["config"]["data"]["modalities"]) * 2 for plan in plans)  # per evaluated epoch
        result = {
            "benchmark": "aim_scale",
            "settings": {"runs": args.runs, "epochs": args.epochs, "pair_breakdowns": args.pair_breakdowns, "long_epochs": args.long_epochs, "sweeps": args.sweeps, "workers": args.workers,
                         "sweep_names": [name for name, _ in sweep_names(args.sweeps)]},
            "write_s": round(write_s, 1),
            "write_runs_s": round(written["seconds"], 1),
            "template_s": round(written["template_seconds"], 1),
            "reindex_s": round(reindex_s, 2),
            "repo_bytes": size,
            "repo_mb": round(size / 1e6, 1),
            "repo_kb_per_run": round(size / 1e3 / max(args.runs, 1), 1),
            "repo_breakdown_bytes": repo_breakdown(repo),
            "series_per_run": series,
            "runs_written": len(runs),
            "statuses": {status: sum(1 for r in runs if r["status"] == status) for status in {r["status"] for r in runs}},
            "evaluated_epochs": sum(r["evaluations"] for r in runs),
            "image_modalities_x_kinds": images // max(len(plans), 1),
            "queries": queries,
            "queries_ok": all(row["ok"] for row in queries),
            "written": [{key: run[key] for key in ("run_hash", "sweep", "status", "epochs", "evaluations")}
                        | {"aggregator": run["hparams"]["aggregator"], "beta": run["hparams"]["beta"]}
                        for run in runs] if len(runs) <= LISTED_RUNS else None,
            "ui": ui,
            "long_run": long_run,
            "machine": {**machine_facts(), "load_average_at_start": load_at_start, "host": socket.gethostname()},
        }
        print(table(result), flush=True)
        emit(result, args.out)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
