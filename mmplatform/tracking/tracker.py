"""One Aim run per training, written from Ray Train rank 0.

``Tracker`` wraps ``aim.Run`` with the three things training needs and Aim does not give:

- **Re-attach without duplicates** (:mod:`.steps`). A restarted trial opens the run by the
  hash kept in its checkpoint. Each sequence (metric or image name + context) accepts a
  step only if the run holds no value at that step yet (``track`` returns False otherwise).
- **A dead server cannot stop training** (:mod:`.remote`). For ``aim://`` repos every Aim
  call runs with a deadline, the server is probed before opening, at each new step and
  before closing, and on the first failure the tracker warns once
  (:class:`RemoteTrackingWarning`) and stops talking to it. It asks again at a new step at
  most every ``reconnect_every_s`` and at close: a server that is back (restarted) gets the
  run re-attached and the journal pushed into it, so a restart costs no point and no replay.
- **Nothing is lost meanwhile** (:mod:`.journal`). For ``aim://`` repos every accepted point
  is also appended to a local journal in ``fallback_dir``, deleted once the server confirms
  the closed run. A journal left behind is pushed into the run when it is re-attached with a
  reachable server, or explicitly with :func:`~mmplatform.tracking.replay.replay_fallback`
  (into the server, or into a local repo to browse with ``aim up``).

This module only composes them around one ``aim.Run``; each is tested on its own.

A local repo path is written directly (no deadline, no journal): a local disk error is a
real error and is raised. Not thread-safe: one tracker is used by one thread.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmplatform.tracking.journal import Journal, JournalContents, mark_replayed, read_journal
from mmplatform.tracking.remote import RemoteUnavailable, ServerLink, is_remote, probe
from mmplatform.tracking.steps import SequenceKey, StepLedger, steps_in_run
from mmplatform.tracking.values import checked_hparams, metric_value, to_plain

logger = logging.getLogger(__name__)

RUN_LIST_CACHE_S = 0.6
"""A little over the 0.5 s for which Aim 3.29.1 caches a repo's run list."""
RECONNECT_EVERY_S = 30.0
"""How often a tracker that gave its server up asks whether it is back (one probe, at a new step)."""


class RemoteTrackingWarning(UserWarning):
    """The Aim server is unreachable; metrics are journaled locally instead."""


def normalize_repo(repo: str | Path) -> str:
    """The form a repo is compared and recorded in: ``aim://...`` as is, paths absolute."""
    return repo if is_remote(repo) else str(Path(repo).expanduser().absolute())


class Tracker:
    """An Aim run with contexts, dedupe by step, and a local fallback for remote repos.

    Args:
        repo: a local repo path (created if missing) or ``aim://host:port``.
        experiment: Aim experiment name (the sweep or study).
        run_name: the run's name in the Aim UI (e.g. ``<sweep>/<trial id> <aggregator>``);
            ``None`` leaves Aim's default (the hash).
        run_hash: the hash of a run to re-attach to (from the checkpoint), or None.
        hparams: flat ``{name: scalar}``; see :func:`~mmplatform.tracking.values.flatten_hparams`. Stored as
            ``run["hparams"]`` and queryable as ``run.hparams.<name>``.
        fallback_dir: where the journal of a remote run lives; default
            ``<data root>/aim_fallback``. Put it on storage that outlives the worker
            (the trial's results directory); JSON lines are safe on NFS.
        timeout_s: deadline of each remote Aim call (opening, closing included).
        probe_timeout_s: deadline of the HTTP liveness probe.
        reconnect_every_s: after giving the server up, the least time between two attempts
            to re-attach (made at a new step, and always at close).
        strict: raise :class:`~mmplatform.tracking.remote.RemoteUnavailable` instead of
            falling back, and keep no journal (used by replay, which is the fallback).
    """

    def __init__(
        self,
        repo: str | Path,
        experiment: str,
        run_hash: str | None = None,
        hparams: Mapping[str, Any] | None = None,
        fallback_dir: str | Path | None = None,
        *,
        run_name: str | None = None,
        timeout_s: float = 30.0,
        probe_timeout_s: float = 3.0,
        reconnect_every_s: float = RECONNECT_EVERY_S,
        strict: bool = False,
    ):
        self.repo = normalize_repo(repo)
        self.experiment = experiment
        self.run_name = run_name
        self.hparams = checked_hparams(hparams)
        self.remote = is_remote(self.repo)
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.reconnect_every_s = reconnect_every_s
        self.strict = strict
        if fallback_dir is None:
            from mmplatform.paths import data_root

            fallback_dir = data_root() / "aim_fallback"
        self.fallback_dir = Path(fallback_dir).expanduser()

        self._run: Any = None
        self._link: ServerLink | None = None
        self._journal: Journal | None = None
        self._steps = StepLedger()
        self._newest_step = -1
        self._degraded = False
        self._closed = False
        self._next_reconnect = 0.0

        if self.remote:
            self._open_remote(run_hash)
        else:
            self._run, recorded = self._open_run(run_hash)
            self._steps.update(recorded)
            self._run_hash = self._run.hash

    # ---------------------------------------------------------------- opening

    def _open_remote(self, run_hash: str | None) -> None:
        self._link = ServerLink(self.repo, timeout_s=self.timeout_s, probe_timeout_s=self.probe_timeout_s)
        previous = self._previous_journal(run_hash)
        target = run_hash
        if previous is not None:
            # An earlier replay may have put this run's records into another run.
            target = previous.replayed.get(self.repo, run_hash)
        reason = self._link.check()
        if reason is None:
            try:
                self._run, recorded = self._link.call(self._open_run, target)
                self._steps.update(recorded)
            except RemoteUnavailable as error:
                reason = str(error)
            except Exception as error:
                # The server answered the probe, so this may be a bug rather than the
                # network: training still goes on, but keep the traceback.
                logger.warning("opening run %s on %s failed", target, self.repo, exc_info=True)
                reason = f"{type(error).__name__}: {error}"
        if self._run is not None:
            self._run_hash = self._run.hash
        else:
            from aim.sdk.utils import generate_run_hash

            # Keep the caller's hash so a checkpoint keeps pointing at the same journal.
            self._run_hash = run_hash or generate_run_hash()
        if not self.strict:
            self._journal = Journal(self.fallback_dir, self._run_hash)
            self._journal.open({"repo": self.repo, "experiment": self.experiment, "hparams": self.hparams,
                                "run_name": self.run_name})
        if reason is not None:
            self._give_up(f"at open: {reason}")
        if previous is not None:
            self._recover(previous)

    def _previous_journal(self, run_hash: str | None) -> JournalContents | None:
        if run_hash is None or self.strict:
            return None
        path = Journal(self.fallback_dir, run_hash).path
        return read_journal(path) if path.exists() else None

    def _open_run(self, run_hash: str | None) -> tuple[Any, dict[SequenceKey, set[int]]]:
        """Open (or re-attach) the ``aim.Run``; returns it with the steps it already holds."""
        from aim import Run
        from aim.sdk.errors import MissingRunError

        options = dict(
            repo=self.repo,
            experiment=self.experiment,
            # No system metrics or captured stdout: rank 0 of a trial logs what it means to.
            system_tracking_interval=None,
            capture_terminal_logs=False,
            log_system_params=False,
        )
        run = None
        if run_hash is not None:
            for attempt in range(2):
                _forget_cached_run_list()
                try:
                    # A crashed writer's lock: Aim frees it by itself in a local repo (its
                    # PID is dead), but a server holds it for minutes. The trial's previous
                    # process is gone (Ray restarted it) and one run has one writer, so a
                    # remote re-attach forces it (Aim logs "Force-releasing locks").
                    run = Run(run_hash, force_resume=self.remote, **options)
                    break
                except MissingRunError:
                    if attempt == 0 and self.remote:
                        # The server caches its run list too; ask again once it expired.
                        time.sleep(RUN_LIST_CACHE_S)
                        continue
                    logger.warning("run %s is not in %s; starting a new run", run_hash, self.repo)
        if run is None:
            run, recorded = Run(**options), {}
        else:
            recorded = steps_in_run(run)
        run["hparams"] = self.hparams
        if self.run_name:
            run.name = self.run_name
        return run, recorded

    def _recover(self, previous: JournalContents) -> None:
        """Push a journal left by an earlier process into this run (deduped by step)."""
        if previous.run_hash == self._run_hash and self._run is None:
            # Same journal, server still down: only learn which steps are already taken.
            self._steps.update(previous.recorded_steps())
            return
        pushed = self.push_journal(previous)
        if previous.run_hash != self._run_hash:
            mark_replayed(previous.path, self.repo, self._run_hash)
        if pushed:
            logger.info("pushed %d journaled records of %s into run %s", pushed, previous.path, self._run_hash)

    # ---------------------------------------------------------------- tracking

    @property
    def run_hash(self) -> str:
        """Keep this in the checkpoint; it can change only when re-attaching to a hash the
        server does not know (a run journaled while the server was down)."""
        return self._run_hash

    @property
    def degraded(self) -> bool:
        """True once the remote server was given up; points go only to the journal."""
        return self._degraded

    @property
    def journal_path(self) -> Path | None:
        return self._journal.path if self._journal is not None else None

    def track(self, value: Any, name: str, step: int, context: Mapping[str, Any] | None = None) -> bool:
        """Record ``value`` at ``step``; False if the sequence already has this step."""
        return bool(self.track_many({name: value}, step, context))

    def track_many(self, metrics: Mapping[str, Any], step: int, context: Mapping[str, Any] | None = None) -> int:
        """Record several metrics with one context at one step; returns how many were new."""
        return self._track_metrics(metrics, step, context, journal=True)

    def track_image(
        self,
        image: Any,
        name: str,
        step: int,
        context: Mapping[str, Any] | None = None,
        caption: str | None = None,
    ) -> bool:
        """Record an image (PIL, or a CHW/HWC tensor or array, floats in [0, 1]) at ``step``."""
        from mmplatform.tracking.images import to_pil

        return self._track_image(to_pil(image), name, step, context, caption, journal=True)

    def track_text(self, text: str, name: str, step: int, context: Mapping[str, Any] | None = None) -> bool:
        """Record a text (e.g. generated captions, one per line) at ``step``, as an Aim ``Text``."""
        return self._track_text(str(text), name, step, context, journal=True)

    def set_summary(self, summary: Mapping[str, Any]) -> None:
        """Store the final summary as ``run["summary"]`` (queryable as ``run.summary.<key>``)."""
        self._set_summary(summary, journal=True)

    def set_property(self, key: str, value: Any) -> None:
        """Any other run-level value (``run[key] = value``); not journaled."""
        self._call(self._run_setitem, key, to_plain(value))

    def push_journal(self, contents: JournalContents) -> int:
        """Feed a journal's records through this run, deduped by step like any other point;
        returns how many metric points, images and texts were new to the run.

        The records are journaled again only when they come from another journal than this
        tracker's own (a re-attach under a new hash): re-appending a journal to itself would
        only grow it.
        """
        journal = self._journal is not None and contents.path != self._journal.path
        pushed = 0
        for record in contents.records:
            kind = record["kind"]
            if kind == "metric":
                pushed += self._track_metrics(
                    {record["name"]: record["value"]}, record["step"], record["context"], journal=journal
                )
            elif kind == "image":
                from PIL import Image

                with Image.open(contents.path.parent / record["path"]) as image:
                    image.load()
                    pushed += self._track_image(
                        image, record["name"], record["step"], record["context"], record.get("caption"),
                        journal=journal,
                    )
            elif kind == "text":
                pushed += self._track_text(record["value"], record["name"], record["step"], record["context"],
                                           journal=journal)
            elif kind == "summary":
                # Not counted: setting the same summary again changes nothing.
                self._set_summary(record["value"], journal=journal)
        return pushed

    def close(self) -> None:
        """Finish the run. For a remote run, a clean close means the server holds every
        point (Aim flushes its queue), so the journal is deleted; otherwise it stays."""
        if self._closed:
            return
        if self._degraded:
            self._reconnect(at_close=True)
        self._closed = True
        if self._run is not None:
            if self.remote:
                self._check_server("at close")
            self._call(self._run_close)
        if self._journal is not None:
            if self._degraded:
                self._journal.close()
            else:
                self._journal.delete()
        if self._link is not None:
            self._link.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _track_metrics(self, metrics, step, context, *, journal: bool) -> int:
        context = to_plain(dict(context or {}))
        step = self._check_step(step)
        fresh = {name: metric_value(value) for name, value in metrics.items()
                 if not self._steps.has(name, context, step)}
        if not fresh:
            return 0
        self._before_step(step)
        for name, value in fresh.items():
            if journal:
                self._journal_append({"kind": "metric", "name": name, "context": context, "step": step, "value": value})
            self._steps.add(name, context, step)
        # One call for the whole dict: Aim sends it as one batch to the server.
        self._call(self._run_track, fresh, step, context)
        return len(fresh)

    def _track_image(self, pil_image, name, step, context, caption, *, journal: bool) -> bool:
        context = to_plain(dict(context or {}))
        step = self._check_step(step)
        if self._steps.has(name, context, step):
            return False
        self._before_step(step)
        if journal and self._journal is not None:
            path = self._journal.save_image(pil_image, name, step, context)
            self._journal_append(
                {"kind": "image", "name": name, "context": context, "step": step, "path": path, "caption": caption}
            )
        self._steps.add(name, context, step)
        self._call(self._run_track_image, pil_image, name, step, context, caption)
        return True

    def _track_text(self, text: str, name: str, step: int, context, *, journal: bool) -> bool:
        context = to_plain(dict(context or {}))
        step = self._check_step(step)
        if self._steps.has(name, context, step):
            return False
        self._before_step(step)
        if journal:
            self._journal_append({"kind": "text", "name": name, "context": context, "step": step, "value": text})
        self._steps.add(name, context, step)
        self._call(self._run_track_text, text, name, step, context)
        return True

    def _set_summary(self, summary, *, journal: bool) -> None:
        summary = to_plain(dict(summary))
        if journal:
            self._journal_append({"kind": "summary", "value": summary})
        self._call(self._run_setitem, "summary", summary)

    def _check_step(self, step: int) -> int:
        if self._closed:
            raise RuntimeError("tracker is closed")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return step

    def _before_step(self, step: int) -> None:
        # One probe per epoch, not per metric: a server that died since the last epoch is
        # noticed here, before more points go into a queue nobody will drain.
        if step > self._newest_step:
            self._newest_step = step
            if self.remote and self._run is not None:
                self._check_server(f"before step {step}")
            elif self._degraded:
                self._reconnect(at_close=False)

    def _check_server(self, when: str) -> None:
        reason = self._link.check()
        if reason is not None:
            self._give_up(f"{when}: {reason}")

    def _reconnect(self, *, at_close: bool) -> None:
        """Re-attach to a server that is back, as a restarted trial would: open the run by its
        hash, learn the steps the server really holds, push the journal (deduped by step)."""
        if self.strict or self._journal is None:
            return
        now = time.monotonic()
        if not at_close and now < self._next_reconnect:
            return
        self._next_reconnect = now + self.reconnect_every_s
        if probe(self.repo, self.probe_timeout_s) is not None:
            return
        self._journal.close()
        self._journal, self._degraded, self._steps = None, False, StepLedger()
        given_up = self._run_hash
        self._open_remote(given_up)
        if not self._degraded:
            logger.warning("Aim server %s is back: run %s re-attached and its journal pushed", self.repo,
                           self._run_hash)

    def _journal_append(self, record: dict) -> None:
        if self._journal is not None:
            self._journal.append(record)

    def _call(self, function, *args) -> None:
        if self._run is None:
            return
        if self._link is None:  # local repo
            function(*args)
            return
        try:
            self._link.call(function, *args)
        except Exception as error:
            self._give_up(f"{getattr(function, '__name__', function)}: {type(error).__name__}: {error}")

    def _give_up(self, reason: str) -> None:
        if self._degraded:
            return
        self._degraded = True
        abandoned = [self._run, getattr(self._run, "repo", None)] if self._run is not None else []
        self._run = None
        self._link.abandon(*abandoned)
        if self.strict:
            raise RemoteUnavailable(f"Aim server {self.repo} unreachable ({reason})")
        if self._journal is not None:
            self._journal.append({"kind": "unavailable", "reason": reason})
        message = (
            f"Aim server {self.repo} unreachable ({reason}). Training continues; run {self._run_hash} "
            f"is journaled to {self.journal_path}. It is pushed to the server when the run is "
            f"re-attached while the server is up, or with mmplatform.tracking.replay_fallback("
            f"{str(self.fallback_dir)!r}, {self.repo!r})."
        )
        logger.warning(message)
        warnings.warn(message, RemoteTrackingWarning, stacklevel=4)

    # Run methods, called through _call (and so, for remote runs, on the link's thread).

    def _run_track(self, values: dict, step: int, context: dict) -> None:
        self._run.track(values, step=step, context=context)

    def _run_track_image(self, pil_image, name: str, step: int, context: dict, caption: str | None) -> None:
        from aim import Image

        self._run.track(Image(pil_image, caption=caption or ""), name=name, step=step, context=context)

    def _run_track_text(self, text: str, name: str, step: int, context: dict) -> None:
        from aim import Text

        self._run.track(Text(text), name=name, step=step, context=context)

    def _run_setitem(self, key: str, value: Any) -> None:
        self._run[key] = value

    def _run_close(self) -> None:
        self._run.close()


def _forget_cached_run_list() -> None:
    """Aim answers "does run X exist" from a run list cached for 0.5 s (in this process and,
    for ``aim://``, in the server), so a run created just before (a replay of several
    journals, a quick restart) is reported missing and would be forked. Found by
    test_unreachable_at_open_is_journaled_and_replayed."""
    from aim.sdk.repo import Repo

    cache_clear = getattr(Repo._all_run_hashes, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
