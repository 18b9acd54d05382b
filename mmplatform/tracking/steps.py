"""Step de-duplication: each sequence of a run takes a step once.

A sequence is a metric, image or text name with a context (Aim's unit of a series). Epochs
are steps, so a trial that crashes between logging an epoch and checkpointing it, and
re-runs that epoch after a restart, must not log it twice: the first value written for a
step wins. :class:`StepLedger` is the in-memory record a tracker checks before each point;
it is seeded from what the run already holds (:func:`steps_in_run`) and from a journal left
by an earlier process (:meth:`~mmplatform.tracking.journal.JournalContents.recorded_steps`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

SequenceKey = tuple[str, str]
"""(name, :func:`context_key` of the context)."""
SYSTEM_METRIC_PREFIX = "__system__"


def context_key(context: Mapping[str, Any] | None) -> str:
    """A canonical string for a context dict, so equal contexts compare equal."""
    return json.dumps(context or {}, sort_keys=True, separators=(",", ":"))


class StepLedger:
    """The steps each sequence of one run holds."""

    def __init__(self, recorded: Mapping[SequenceKey, Iterable[int]] | None = None):
        self._steps: dict[SequenceKey, set[int]] = {}
        self.update(recorded or {})

    def has(self, name: str, context: Mapping[str, Any], step: int) -> bool:
        return step in self._steps.get((name, context_key(context)), ())

    def add(self, name: str, context: Mapping[str, Any], step: int) -> None:
        self._steps.setdefault((name, context_key(context)), set()).add(int(step))

    def update(self, recorded: Mapping[SequenceKey, Iterable[int]]) -> None:
        """Add every step of ``recorded`` (e.g. read from the run or a journal)."""
        for key, steps in recorded.items():
            self._steps.setdefault(key, set()).update(int(step) for step in steps)

    def as_dict(self) -> dict[SequenceKey, set[int]]:
        return {key: set(steps) for key, steps in self._steps.items()}


def steps_in_run(run: Any) -> dict[SequenceKey, set[int]]:
    """Steps stored per sequence in an open ``aim.Run``.

    The series data, not Aim's ``last_step`` metadata, is the truth: after a server crash the
    metadata can claim a step whose value never reached the disk (seen in
    test_server_killed_mid_run_*), and a step missing that way must be accepted again. One
    read of the run's metadata for the list of sequences, then one read of step keys per
    sequence (no values). Aim's own system metrics are left out.
    """

    def collect(key: str) -> dict:
        try:
            return run.meta_run_tree.collect(key) or {}
        except KeyError:  # a run with nothing tracked yet
            return {}

    contexts = collect("contexts")
    recorded: dict[SequenceKey, set[int]] = {}
    for context_id, sequences in collect("traces").items():
        context = contexts.get(context_id, {})
        for name, info in sequences.items():
            if name.startswith(SYSTEM_METRIC_PREFIX):
                continue
            # Aim stores numbers (version 2) keyed by a hash of the step, with the step in a
            # "step" column; other objects (version 1, images) keyed by the step itself. For
            # those the small "time" column gives the keys without fetching the images
            # (and a keys-only read of a remote array fails server-side in 3.29.1).
            version = info.get("version", 1)
            series = run.series_run_trees[version].subtree((context_id, name))
            if version == 2:
                steps = series.array("step", dtype="int64").values_list()
            else:
                steps = series.array("time").sparse_list()[0]
            recorded[(name, context_key(context))] = {int(step) for step in steps}
    return recorded
