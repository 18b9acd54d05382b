"""Step de-duplication (mmplatform.tracking.steps): the ledger alone, and the steps read back
from a real local Aim run, which seed the ledger when a trial re-attaches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmplatform.tracking.steps import StepLedger, context_key, steps_in_run

MISSING = {"subset": "m0_m1", "modality": "m2", "kind": "missing"}


def test_context_key_is_canonical():
    assert context_key({"b": 1, "a": "x"}) == context_key({"a": "x", "b": 1}) == '{"a":"x","b":1}'
    assert context_key(None) == context_key({}) == "{}"
    assert context_key({"a": 1}) != context_key({"a": "1"})


def test_a_sequence_takes_each_step_once_and_sequences_are_apart():
    ledger = StepLedger()
    assert not ledger.has("coherence", MISSING, 1)
    ledger.add("coherence", MISSING, 1)
    assert ledger.has("coherence", dict(reversed(list(MISSING.items()))), 1)  # same context, other order
    assert not ledger.has("coherence", MISSING, 2)
    assert not ledger.has("coherence", {**MISSING, "kind": "reconstruction"}, 1)
    assert not ledger.has("loss", MISSING, 1)


def test_update_merges_what_the_run_and_a_journal_hold():
    key = ("loss", context_key({"split": "train"}))
    ledger = StepLedger({key: [0, 1]})
    ledger.update({key: {1, 2}, ("lr", "{}"): [0]})
    assert ledger.as_dict() == {key: {0, 1, 2}, ("lr", "{}"): {0}}
    ledger.as_dict()[key].add(99)  # a copy: the ledger cannot be changed behind its back
    assert not ledger.has("loss", {"split": "train"}, 99)


@pytest.fixture
def aim_run(tmp_path):
    from aim import Run

    run = Run(repo=str(tmp_path / "aim"), experiment="steps", system_tracking_interval=None,
              capture_terminal_logs=False, log_system_params=False)
    yield run
    run.close()


def test_steps_in_run_reads_every_sequence_and_skips_aim_system_metrics(aim_run):
    from aim import Image as AimImage
    from aim import Text

    expected = StepLedger()
    for step in (0, 2, 5):  # gaps: the steps, not a count, must come back
        aim_run.track({"loss": 1.0 / (step + 1), "coherence": 0.1 * step}, step=step, context=MISSING)
        expected.add("loss", MISSING, step)
        expected.add("coherence", MISSING, step)
    aim_run.track(7.0, name="loss", step=3, context={"split": "train"})
    expected.add("loss", {"split": "train"}, 3)
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    for step in (1, 4):
        aim_run.track(AimImage(Image.fromarray(pixels)), name="generations", step=step, context={"modality": "m0"})
        expected.add("generations", {"modality": "m0"}, step)
    aim_run.track(Text("a bird"), name="generated_text", step=6, context={})
    expected.add("generated_text", {}, 6)
    aim_run.track(12.5, name="__system__cpu", step=9)

    assert steps_in_run(aim_run) == expected.as_dict()


def test_a_run_with_nothing_tracked_holds_no_steps(aim_run):
    assert steps_in_run(aim_run) == {}
