"""The end of a sweep as a person reads it: one compact table of the trials, best first.

The full metrics of every trial stay in ``best_trial.json`` and in Aim; the table shows what
decides between trials: the method, the sampled hyperparameters, the sweep's objective and the
headline value of each metric the trials report (for PolyMNIST the thesis's three: latent
accuracy, missing-modality coherence, PRD), how far each trial got and how it ended.
"""

from __future__ import annotations

import math
from typing import Any

from mmplatform.evaluation.metrics import headline_columns

HEADLINE_METRICS = {"objective": "objective", **headline_columns()}
"""Flat metric name (``ray.train.report``) -> column title: the objective and each registered
metric's headline value (``mmplatform.evaluation.metrics``); a table shows those its trials have."""

AGGREGATOR_KEY = "model.aggregator"
FAMILY_KEY = "model.family"
DEFAULT_FAMILY = "aggregator"


def ranked(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best objective first; trials without one (errors) last."""
    def key(trial: dict[str, Any]) -> tuple[int, float]:
        value = trial.get("objective")
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return (1, 0.0) if missing else (0, -float(value))

    return sorted(trials, key=key)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3f}"


def _short(key: str) -> str:
    """``model.aggregator_options.num_flows`` -> ``num_flows``."""
    return key.rsplit(".", 1)[-1]


def trials_table(trials: list[dict[str, Any]], searched: list[str]) -> str:
    """A fixed-width table: rank, trial, method (the aggregator, or the model family when it is not
    the aggregator family), searched values, headline metrics, epochs, status."""
    params = [key for key in searched if key not in (AGGREGATOR_KEY, FAMILY_KEY)]
    metrics = [name for name in HEADLINE_METRICS if any(trial.get(name) is not None for trial in trials)]
    header = ["rank", "trial", "method", *(_short(key) for key in params),
              *(HEADLINE_METRICS[name] for name in metrics), "epochs", "status"]
    rows = [header]
    for rank, trial in enumerate(ranked(trials), start=1):
        config = trial.get("config") or {}
        rows.append([
            str(rank),
            str(trial.get("trial_id") or "-"),
            str(config.get(AGGREGATOR_KEY, "-") if config.get(FAMILY_KEY, DEFAULT_FAMILY) == DEFAULT_FAMILY
                else config[FAMILY_KEY]),
            *(_format(config.get(key)) for key in params),
            *(_format(trial.get(name)) for name in metrics),
            _format(trial.get("epoch")),
            str(trial.get("status") or "-"),
        ])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
