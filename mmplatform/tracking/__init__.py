"""Aim tracking for training: one run per trial, safe to re-attach, safe when the server dies.

Importing this package does not import Aim (about 1.3 s) or torch: Aim is loaded when a
tracker is opened or a repo queried, torch never (tensors are recognised by their methods).

- :class:`Tracker`: the run a training writes to (rank 0 only).
- :func:`replay_fallback`: push journals left by an unreachable server into a repo.
- :func:`reindex`, :func:`query_runs`, :func:`query_metrics`, :func:`query_images`, :func:`query_texts`: read runs
  back with AimQL.
"""

from mmplatform.tracking.query import create_local_repo, query_images, query_metrics, query_runs, query_texts, reindex
from mmplatform.tracking.remote import RemoteUnavailable
from mmplatform.tracking.replay import ReplayResult, replay_fallback
from mmplatform.tracking.tracker import RemoteTrackingWarning, Tracker
from mmplatform.tracking.values import flatten_hparams

__all__ = [
    "create_local_repo",
    "RemoteTrackingWarning",
    "RemoteUnavailable",
    "ReplayResult",
    "Tracker",
    "flatten_hparams",
    "query_images",
    "query_metrics",
    "query_runs",
    "query_texts",
    "reindex",
    "replay_fallback",
]
