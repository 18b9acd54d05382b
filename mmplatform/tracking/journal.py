"""A local, append-only record of everything a run sent to a remote Aim server.

Aim's remote writes are fire-and-forget: ``run.track`` returns before the server has the
point, and points queued when the server dies are lost with the process. So while a
tracker writes to ``aim://``, each accepted point is first appended here, one JSON object a
line, images as PNG files next to it. When the server confirms the run (a clean
``close``) the journal is deleted; otherwise it stays, and :func:`replay_fallback
<mmplatform.tracking.replay.replay_fallback>` pushes it into a repo later.

JSON lines because a half-written last line (a crash mid-write) costs one point, not the
file, and any tool can read it; and because appends are safe on the shared (NFS) results
volume, where an Aim/RocksDB repo must never live.

Layout under the fallback directory: ``<run_hash>.jsonl`` and ``<run_hash>/images/``.
Record kinds: ``header`` (first line: intended repo, experiment, hparams), ``metric``, ``text``,
``image``, ``summary``, ``unavailable`` (when and why the server was given up) and
``replayed`` (a repo and run hash that now hold every record above it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmplatform.tracking.steps import SequenceKey, context_key

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"


class Journal:
    def __init__(self, directory: Path, run_hash: str):
        self.directory = Path(directory)
        self.run_hash = run_hash
        self.path = self.directory / f"{run_hash}{JOURNAL_SUFFIX}"
        self.images_dir = self.directory / run_hash / "images"
        self._file = None

    def exists(self) -> bool:
        return self.path.exists()

    def open(self, header: dict[str, Any]) -> None:
        """Start appending; write the header only for a new journal (a re-attach appends)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        is_new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", encoding="utf-8")
        if is_new:
            self.append({"kind": "header", "run_hash": self.run_hash, **header})

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError(f"journal {self.path} is not open")
        record = {"time": time.time(), **record}
        # Flushed per record: a crashed process loses nothing the OS has seen. No fsync:
        # that would cost a disk round trip per metric and guards only against power loss.
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()

    def save_image(self, image: Any, name: str, step: int, context: dict[str, Any]) -> str:
        """Write a PIL image as PNG; return its path relative to the journal's directory."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        # Unique per (name, context, step): the tracker accepts each of those once.
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        context_id = hashlib.sha1(context_key(context).encode()).hexdigest()[:10]
        path = self.images_dir / f"{safe_name}-{context_id}-{step}.png"
        image.save(path, format="PNG")
        return str(path.relative_to(self.directory))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def delete(self) -> None:
        """Drop the journal once the server holds everything in it."""
        self.close()
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.directory / self.run_hash, ignore_errors=True)


@dataclass
class JournalContents:
    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    """metric, image and summary records, in the order they were accepted."""
    replayed: dict[str, str] = field(default_factory=dict)
    """repo -> run hash that holds every record (the latest replay into each repo)."""
    unavailable: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_hash(self) -> str:
        return self.header["run_hash"]

    def recorded_steps(self) -> dict[SequenceKey, set[int]]:
        """Journaled steps per (sequence name, context key)."""
        steps: dict[tuple[str, str], set[int]] = {}
        for record in self.records:
            if record["kind"] in SEQUENCE_KINDS:
                steps.setdefault((record["name"], context_key(record["context"])), set()).add(record["step"])
        return steps


SEQUENCE_KINDS = ("metric", "image", "text")
"""Records that add a step to a sequence of the run (``summary`` sets a value instead)."""


def read_journal(path: Path) -> JournalContents:
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    contents: JournalContents | None = None
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # Only the last line can be torn by a crash; anything else is corruption.
            if number == len(lines):
                logger.warning("%s: ignoring a torn last line", path)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        kind = record.get("kind")
        if contents is None:
            if kind != "header":
                raise ValueError(f"{path}: first line is {kind!r}, not the header")
            contents = JournalContents(path=path, header=record)
        elif kind == "replayed":
            contents.replayed[record["repo"]] = record["run_hash"]
        elif kind == "unavailable":
            contents.unavailable.append(record)
        elif kind in (*SEQUENCE_KINDS, "summary"):
            contents.records.append(record)
    if contents is None:
        raise ValueError(f"{path}: empty journal")
    return contents


def mark_replayed(path: Path, repo: str, run_hash: str) -> None:
    """Record in the journal at ``path`` that run ``run_hash`` of ``repo`` now holds every
    record above this line (read back as :attr:`JournalContents.replayed`)."""
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(json.dumps({"time": time.time(), "kind": "replayed", "repo": repo, "run_hash": run_hash}) + "\n")


def iter_journals(directory: Path) -> Iterator[Path]:
    yield from sorted(Path(directory).glob(f"*{JOURNAL_SUFFIX}"))
