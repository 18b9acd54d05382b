"""TEST-ONLY hooks into the training loop: inject faults and observe the replicas.

Nothing here runs unless the environment variable ``MMPLATFORM_TEST_HOOKS`` holds a JSON
object; the launcher forwards that variable (only when it is set) to the Train workers.
The tests of resumption (``tests/test_resumption.py``) and DDP (``tests/test_ddp.py``) use it
to do what cannot be arranged from outside a worker at a precise point of the training:

- ``events_dir``: every rank appends ``{"event": "start", "rank", "start_epoch", "pid"}`` when
  its loop starts, so a test sees whether a restarted worker resumed or began again.
- ``pause_after_epoch``: after reporting that epoch, rank 0 writes its pid to
  ``<events_dir>/paused.pid`` and sleeps until it is killed (a worker lost at a known point).
- ``pause_at``: ``{"epoch": e, "step": s, "run": r}`` pauses rank 0 the same way after step ``s``
  of epoch ``e`` (mid-epoch), or after the epoch's report without ``step``, in the training whose
  name contains ``r`` (any without ``run``). It pauses once per ``events_dir`` (a restarted worker
  that passes the point again goes on), and ends when the test creates ``<events_dir>/release``
  (or kills the process): the fault matrix injects a fault while the training stands still.
- ``record_steps``: after every training step each rank appends to
  ``<events_dir>/steps.rank<r>.jsonl`` the training's name, the epoch, step, whether the optimizer stepped, the
  guard's count and a SHA-256 of its parameters (replicas are compared bitwise).
- ``nan_loss``: ``{"rank": r, "epoch": e, "step": s}`` turns that rank's loss at that step
  (1-based within the epoch) into NaN, on that rank only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HOOKS_ENV = "MMPLATFORM_TEST_HOOKS"


def forwarded_env() -> dict[str, str]:
    """What the launcher passes on to the Train workers: the hooks' variable if set, else nothing."""
    return {HOOKS_ENV: os.environ[HOOKS_ENV]} if os.environ.get(HOOKS_ENV) else {}


def parameters_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TestHooks:
    __test__ = False  # not a pytest class

    rank: int
    events_dir: Path | None = None
    pause_after_epoch: int | None = None
    pause_at: dict[str, Any] | None = None
    run_name: str = ""
    record_steps: bool = False
    nan_loss: dict[str, int] | None = None

    @classmethod
    def from_env(cls, rank: int, run_name: str = "") -> "TestHooks | None":
        raw = os.environ.get(HOOKS_ENV)
        if not raw:
            return None
        settings: dict[str, Any] = json.loads(raw)
        events_dir = settings.get("events_dir")
        return cls(
            rank=rank,
            events_dir=Path(events_dir) if events_dir else None,
            pause_after_epoch=settings.get("pause_after_epoch"),
            pause_at=settings.get("pause_at"),
            run_name=run_name,
            record_steps=bool(settings.get("record_steps")),
            nan_loss=settings.get("nan_loss"),
        )

    def _append(self, file_name: str, record: dict[str, Any]) -> None:
        if self.events_dir is None:
            return
        self.events_dir.mkdir(parents=True, exist_ok=True)
        with open(self.events_dir / file_name, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def started(self, start_epoch: int) -> None:
        self._append("events.jsonl", {"event": "start", "rank": self.rank, "start_epoch": start_epoch,
                                      "pid": os.getpid()})

    def loss(self, loss: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        target = self.nan_loss
        if target and (target["rank"], target["epoch"], target["step"]) == (self.rank, epoch, step):
            return loss * float("nan")
        return loss

    def after_step(self, model: torch.nn.Module, epoch: int, step: int, stepped: bool, bad_steps: int) -> None:
        if self.record_steps:
            self._append(f"steps.rank{self.rank}.jsonl", {
                "run": self.run_name, "epoch": epoch, "step": step, "stepped": stepped, "bad_steps": bad_steps,
                "digest": parameters_digest(model),
            })
        self._maybe_pause(epoch, step)

    def after_report(self, epoch: int) -> None:
        if self.rank == 0 and self.pause_after_epoch == epoch and self.events_dir is not None:
            self._pause()
        self._maybe_pause(epoch, None)

    def _maybe_pause(self, epoch: int, step: int | None) -> None:
        point = self.pause_at
        if self.rank != 0 or not point or self.events_dir is None:
            return
        if (point["epoch"], point.get("step")) != (epoch, step) or point.get("run", "") not in self.run_name:
            return
        if (self.events_dir / "paused.pid").exists():  # paused here once already
            return
        self._pause()

    def _pause(self) -> None:
        self.events_dir.mkdir(parents=True, exist_ok=True)
        staged = self.events_dir / "paused.pid.tmp"
        staged.write_text(str(os.getpid()))
        staged.rename(self.events_dir / "paused.pid")
        release = self.events_dir / "release"
        while not release.exists():  # until the test releases or kills this process
            time.sleep(0.2)
