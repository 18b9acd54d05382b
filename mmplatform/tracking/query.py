"""Reading runs back with AimQL, for tests and analysis scripts (not for the training loop).

Aim 3.29.1 answers ``Repo.query_*`` only from its index, which ``aim up`` builds in the
background and ``aim server`` does not build at all: a run written a moment ago is
invisible to queries until :func:`reindex` runs. Results are returned as plain dataclasses
so callers need not hold Aim objects (and their open storage) around.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmplatform.tracking.remote import install_exit_guard, is_remote


class _AbsentContextKeyFilter(logging.Filter):
    """Drops Aim's "query failed" warning when the failure is a ``KeyError``: the series' context
    lacks a key the query reads (``metric.context.subset`` on a series without a subset), so the
    series does not match, which is no failure. Aim logs one line per such series: the README's
    ``metric.name == "latent_accuracy" and metric.context.subset == "m0"`` printed 2,000 over 2,000
    runs (each run's mean over the subsets has no subset; ``benchmarks/aim_scale.py``), a query
    without the name test one per series of every run. Any other failure, e.g. calling what a
    context value lacks, is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "query failed, %s" and bool(record.args) and isinstance(record.args[0], KeyError))


logging.getLogger("aim.storage.query").addFilter(_AbsentContextKeyFilter())


def aim_executable() -> str:
    """The ``aim`` next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("aim")
    if beside.exists():
        return str(beside)
    found = shutil.which("aim")
    if found is None:
        raise FileNotFoundError("no `aim` executable next to the interpreter or on PATH")
    return found


def reindex(repo: str | Path, timeout_s: float = 300.0) -> None:
    """Rebuild the query index of ``repo`` so that every run in it is queryable.

    A local path runs ``aim storage --repo R reindex -y``, which must not race a live
    ``aim up`` on the same repo. For ``aim://`` the server rebuilds the index of the repo it
    owns (the same operation through Aim's remote repo proxy), since no other process may
    open that repo.
    """
    if is_remote(repo):
        install_exit_guard()
        from aim import Repo

        Repo.from_path(str(repo))._recreate_index()
        return
    completed = subprocess.run(
        [aim_executable(), "storage", "--repo", str(repo), "reindex", "-y"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"aim storage reindex failed ({completed.returncode}): {completed.stderr[-2000:]}")


@dataclass
class RunRecord:
    run_hash: str
    experiment: str | None
    hparams: dict[str, Any]
    name: str | None
    """What the Aim UI shows for the run (``<sweep>/<trial id> <aggregator>`` for a sweep's trials)."""
    summary: dict[str, Any] | None
    params: dict[str, Any] = field(default_factory=dict)
    """Every run-level value (``run[...]``), hparams and summary included."""


@dataclass
class SeriesRecord:
    run_hash: str
    name: str
    context: dict[str, Any]
    steps: list[int]
    values: list[Any]
    """Floats for metrics; PIL images for image sequences."""


def _open(repo: str | Path):
    if is_remote(repo):
        install_exit_guard()
    from aim import Repo

    return Repo.from_path(str(repo))


def query_runs(repo: str | Path, query: str = "") -> list[RunRecord]:
    """Runs matching an AimQL expression, e.g. ``'run.hparams.aggregator == "mopoe"'``."""
    records = []
    for trace in _open(repo).query_runs(query, report_mode=0).iter_runs():
        run = trace.run
        params = run[...] or {}
        records.append(
            RunRecord(
                run_hash=run.hash,
                experiment=run.experiment,
                hparams=params.get("hparams") or {},
                name=run.name,
                summary=params.get("summary"),
                params=params,
            )
        )
    return records


def query_metrics(repo: str | Path, query: str) -> list[SeriesRecord]:
    """Metric series matching AimQL, e.g.
    ``'metric.name == "coherence" and metric.context.kind == "missing" and run.hparams.aggregator == "mopoe"'``.
    """
    records = []
    for metric in _open(repo).query_metrics(query, report_mode=0).iter():
        steps, (values,) = metric.data.view("val").items_list()  # real steps, sorted
        records.append(SeriesRecord(metric.run.hash, metric.name, metric.context.to_dict(), steps, values))
    return records


def query_images(repo: str | Path, query: str) -> list[SeriesRecord]:
    """Image series matching AimQL (``images.name``/``images.context`` ...); values are PIL images."""
    records = []
    for sequence in _open(repo).query_images(query, report_mode=0).iter():
        steps, (values,) = sequence.data.view("val").items_list()
        # A step holds one image, or a list when several were tracked at once.
        images = [(value[0] if isinstance(value, list) else value).to_pil_image() for value in values]
        records.append(SeriesRecord(sequence.run.hash, sequence.name, sequence.context.to_dict(), list(steps), images))
    return records


def query_texts(repo: str | Path, query: str) -> list[SeriesRecord]:
    """Text series matching AimQL (``texts.name``/``texts.context`` ...); values are strings."""
    records = []
    for sequence in _open(repo).query_texts(query, report_mode=0).iter():
        steps, (values,) = sequence.data.view("val").items_list()
        texts = [(value[0] if isinstance(value, list) else value).data for value in values]
        records.append(SeriesRecord(sequence.run.hash, sequence.name, sequence.context.to_dict(), list(steps), texts))
    return records


def create_local_repo(repo: str | Path) -> None:
    """Create a local repo now, once: concurrent trials that each create it on first use race
    (one of them then fails with "repository ... out of date"). A remote repo needs nothing."""
    if is_remote(repo):
        return
    from aim import Repo

    Repo.from_path(str(repo), init=True)
