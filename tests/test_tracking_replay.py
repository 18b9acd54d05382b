"""``mmplatform tracking replay``: the journal of a run whose Aim server was unreachable goes into
a repo once, with every metric, image and text; replaying again adds nothing.

The journal is written the way training writes it: a ``Tracker`` on a closed ``aim://`` port
(nothing listens there), which falls back to its journal. The command runs as users run it
(``mmplatform.cli.main``), into a real local Aim repo that is then read back with AimQL.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from mmplatform.cli import main
from mmplatform.tracking import RemoteTrackingWarning, Tracker, query_images, query_metrics, query_runs, query_texts, reindex
from mmplatform.tracking.journal import iter_journals
from tests.aim_fixtures import free_port

HPARAMS = {"aggregator": "mopoe", "model.beta": 1.0}
LOSS = {"split": "train"}
MISSING = {"split": "test", "kind": "missing", "subset": "m0", "modality": "m1"}
GRID = {"kind": "conditional", "modality": "m0", "split": "test"}
CAPTIONS = {"kind": "conditional", "modality": "text", "split": "test"}
LOSSES, COHERENCES = [3.5, 2.25, 1.125], [0.1, 0.4, 0.7]


def grid(step: int) -> Image.Image:
    pixels = (np.arange(6 * 10 * 3, dtype=np.uint32).reshape(6, 10, 3) * (step + 3) % 256).astype(np.uint8)
    return Image.fromarray(pixels)


def caption(step: int) -> str:
    return f"input: a small bird\nm0: a bird with {step} red wings"


@pytest.fixture
def journal(tmp_path):
    """A training's three epochs journaled while its Aim server was unreachable."""
    fallback = tmp_path / "fallback"
    with pytest.warns(RemoteTrackingWarning):
        with Tracker(f"aim://127.0.0.1:{free_port()}", "replay-cli", hparams=HPARAMS, fallback_dir=fallback,
                     run_name="offline-training") as tracker:
            for epoch, (loss, coherence) in enumerate(zip(LOSSES, COHERENCES), start=1):
                tracker.track(loss, "loss", epoch, LOSS)
                tracker.track(coherence, "coherence", epoch, MISSING)
                tracker.track_image(grid(epoch), "generations", epoch, GRID)
                tracker.track_text(caption(epoch), "generated_text", epoch, CAPTIONS)
            tracker.set_summary({"status": "finished", "epoch": 3})
    assert tracker.degraded and len(list(iter_journals(fallback))) == 1
    return fallback


def replay(capsys, fallback, repo) -> tuple[int, str]:
    assert main(["tracking", "replay", "--fallback-dir", str(fallback), "--repo", str(repo)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    pushed, run_hash = re.search(r": (\d+) points -> run (\w+) in ", line).groups()
    return int(pushed), run_hash


def test_replay_pushes_every_metric_image_and_text_once_and_again_nothing(journal, tmp_path, capsys):
    repo = tmp_path / "recovered"
    pushed, run_hash = replay(capsys, journal, repo)
    assert pushed == 3 * 4  # 3 epochs x (2 metrics + 1 image + 1 text)
    again, same_run = replay(capsys, journal, repo)
    assert (again, same_run) == (0, run_hash)

    reindex(repo)
    (run,) = query_runs(repo, 'run.experiment == "replay-cli"')
    assert run.run_hash == run_hash and run.name == "offline-training"
    assert run.hparams == HPARAMS and run.summary == {"status": "finished", "epoch": 3}
    series = {(s.name, tuple(sorted(s.context.items()))): (s.steps, s.values)
              for s in query_metrics(repo, f'run.hash == "{run_hash}"')}
    assert series == {("loss", tuple(sorted(LOSS.items()))): ([1, 2, 3], LOSSES),
                      ("coherence", tuple(sorted(MISSING.items()))): ([1, 2, 3], COHERENCES)}
    (images,) = query_images(repo, f'run.hash == "{run_hash}"')
    assert (images.name, images.context, images.steps) == ("generations", GRID, [1, 2, 3])
    for step, image in zip(images.steps, images.values):
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(grid(step)))
    (texts,) = query_texts(repo, f'run.hash == "{run_hash}"')
    assert (texts.name, texts.context, texts.steps) == ("generated_text", CAPTIONS, [1, 2, 3])
    assert texts.values == [caption(step) for step in (1, 2, 3)]


def test_replay_with_nothing_to_replay_says_so(tmp_path, capsys):
    assert main(["tracking", "replay", "--fallback-dir", str(tmp_path / "empty"), "--repo", str(tmp_path / "repo")]) == 0
    assert capsys.readouterr().out.strip() == f"nothing to replay in {tmp_path / 'empty'}"
