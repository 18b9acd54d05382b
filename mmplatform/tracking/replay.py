"""Recovering journaled runs: push them into an Aim repo once one is reachable."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mmplatform.tracking.journal import iter_journals, mark_replayed, read_journal
from mmplatform.tracking.tracker import Tracker, normalize_repo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    journal: Path
    repo: str
    run_hash: str
    """The run in ``repo`` that now holds the journal's records."""
    pushed: int
    """Records that were new to that run (0 when replayed before)."""


def replay_fallback(
    fallback_dir: str | Path, repo: str | Path | None = None, *, timeout_s: float = 120.0
) -> list[ReplayResult]:
    """Push every journal in ``fallback_dir`` into ``repo``.

    ``repo`` defaults to the repo each run was meant for (its journal's header). Each journal
    goes into the run it names if ``repo`` has it (the server died mid-run: the points it
    missed are appended to the same run), else into a new run with the same experiment and
    hparams, whose ``run["fallback"]`` records the intended repo and original hash. A local
    path works too: it gives a normal Aim repo to browse with ``aim up --repo <path>``.

    Idempotent: points are deduped by step as in :class:`Tracker`, and the journal records
    which run took it, so running it again pushes nothing new. Raises
    :class:`~mmplatform.tracking.remote.RemoteUnavailable` if the server fails meanwhile; a
    journal is marked replayed only after the server confirmed the closed run.
    """
    results = []
    for path in iter_journals(Path(fallback_dir)):
        contents = read_journal(path)
        target_repo = normalize_repo(contents.header["repo"] if repo is None else repo)
        tracker = Tracker(
            target_repo,
            contents.header["experiment"],
            run_hash=contents.replayed.get(target_repo, contents.run_hash),
            hparams=contents.header["hparams"],
            run_name=contents.header.get("run_name"),  # journals written before names have none
            timeout_s=timeout_s,
            strict=True,
        )
        try:
            pushed = tracker.push_journal(contents)
            if tracker.run_hash != contents.run_hash:
                tracker.set_property(
                    "fallback",
                    {"intended_repo": contents.header["repo"], "original_run_hash": contents.run_hash},
                )
        finally:
            tracker.close()
        mark_replayed(path, tracker.repo, tracker.run_hash)
        logger.info("replayed %s into run %s of %s (%d new records)", path, tracker.run_hash, target_repo, pushed)
        results.append(ReplayResult(journal=path, repo=tracker.repo, run_hash=tracker.run_hash, pushed=pushed))
    return results
