"""What a run can store (mmplatform.tracking.values): flat scalar hparams, plain numbers, float metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmplatform.tracking import Tracker
from mmplatform.tracking.values import checked_hparams, flatten_hparams, metric_value, to_plain


def test_flatten_hparams_gives_flat_scalars():
    config = {"model": {"aggregator": "mopoe", "beta": np.float32(0.5), "dims": [32, 64]}, "seed": 3}
    assert flatten_hparams(config) == {
        "model.aggregator": "mopoe",
        "model.beta": 0.5,
        "model.dims": "[32, 64]",
        "seed": 3,
    }


def test_to_plain_turns_numpy_and_torch_numbers_into_python_ones_recursively():
    value = {"a": np.int64(3), "b": [torch.tensor(0.25), (np.float32(1.5),)], 4: None}
    plain = to_plain(value)
    assert plain == {"a": 3, "b": [0.25, [1.5]], "4": None}
    assert type(plain["a"]) is int and type(plain["b"][0]) is float


def test_what_cannot_be_stored_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot store object"):
        to_plain({"x": object()})
    with pytest.raises(ValueError, match="hparam 'model' is not a scalar; pass flatten_hparams"):
        checked_hparams({"model": {"beta": 1.0}})


def test_nested_hparams_are_rejected_before_a_run_is_opened(tmp_path):
    with pytest.raises(ValueError, match="flatten_hparams"):
        Tracker(tmp_path / "aim", "exp", hparams={"model": {"beta": 1.0}})
    assert not (tmp_path / "aim").exists()


def test_metric_values_are_always_floats():
    # An int first and a float later would make Aim rewrite the sequence's dtype.
    assert [type(metric_value(v)) for v in (1, np.int32(2), torch.tensor(3), 0.5, True)] == [float] * 5
    assert metric_value(np.int32(2)) == 2.0
