"""The sweep's trial configs, without Ray: template + sampled values, conditional aggregator
options, and validation of every searched aggregator before anything starts."""

from __future__ import annotations

import pytest

from mmplatform.config import ConfigError
from mmplatform.sweep.config import build_sweep_config

SPACE = {
    "model.aggregator": {"type": "choice", "values": ["mofop", "mopoe"]},
    "model.aggregator_options.num_flows": {"type": "choice", "values": [3]},
    "model.beta": {"type": "uniform", "low": 0.5, "high": 2.0},
}


def sweep(base=None, space=SPACE):
    return build_sweep_config({"name": "s", "base": {"data": {"path": "/nowhere"}, **(base or {})},
                               "search_space": space, "scheduler": {"max_epochs": 4}})


def test_a_trial_is_the_template_with_the_sampled_values_and_its_bookkeeping():
    config = sweep({"model": {"latent_dim": 16}}).trial_config(
        {"model.aggregator": "mofop", "model.aggregator_options.num_flows": 3, "model.beta": 1.5}, "t7")
    assert (config.model.aggregator, config.model.aggregator_options, config.model.beta) == ("mofop", {"num_flows": 3}, 1.5)
    assert config.model.latent_dim == 16 and config.training.epochs == 4 and config.name == "s-t7"
    assert config.tracking.run_name == "s/t7 mofop" and config.tracking.tags == {"sweep": "s", "trial_id": "t7"}


def test_options_an_aggregator_does_not_take_are_left_out_of_its_trials():
    """A study searching flow options may also run MoPoE (MIMIC's f-means against MoPoE)."""
    config = sweep().trial_config({"model.aggregator": "mopoe", "model.aggregator_options.num_flows": 3,
                                   "model.beta": 1.0}, "t1")
    assert config.model.aggregator == "mopoe" and config.model.aggregator_options == {}


def test_options_fixed_in_the_template_are_still_checked_for_every_searched_aggregator():
    """Only sampled options are conditional: a template option MoPoE does not take is an error,
    found before Ray starts even though the first aggregator searched (mofop) takes it."""
    with pytest.raises(ConfigError, match="num_flows"):
        sweep({"model": {"aggregator_options": {"num_flows": 2}}})
    with pytest.raises(ConfigError, match="model.aggregator"):
        sweep(space={**SPACE, "model.aggregator": {"type": "choice", "values": ["mofop", "no_such_fusion"]}})
