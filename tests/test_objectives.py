"""Objectives: options share the losses' defaults, each is built from the config, and the data it needs is
checked with a clear error."""

import inspect

import pytest

from medgrain.losses import MGCALoss, MGLLLoss
from medgrain.losses.mgca import token_weights_from_attention
from medgrain.losses.objective import OBJECTIVES, MGCAOptions, MGLLOptions, build_objective
from medgrain.losses.objective.mgca import TOKEN_WEIGHT_OPTIONS
from medgrain.training.config import ConfigError, load_config


def _defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize(("options", "loss", "own"), [(MGLLOptions, MGLLLoss, ()),
                                                      (MGCAOptions, MGCALoss, TOKEN_WEIGHT_OPTIONS)])
def test_every_option_default_is_the_loss_default(options, loss, own):
    fields = {n: f.default for n, f in options.model_fields.items()}
    loss_defaults = _defaults(loss)
    assert set(fields) - set(own) <= set(loss_defaults), "an option that is not an argument of the loss"
    for name in set(fields) - set(own):
        assert fields[name] == loss_defaults[name], name
        assert type(fields[name]) is type(loss_defaults[name]), name


def test_token_weight_quantiles_default_to_the_functions():
    weights = _defaults(token_weights_from_attention)
    options = MGCAOptions()
    assert (options.weight_low, options.weight_high) == (weights["low"], weights["high"])


def _objective(name, overrides=(), granularities=("abnormality",), has_report=True):
    cfg = load_config({"data": {"manifest": "m.jsonl"}, "objective": {"name": name}}, list(overrides))
    return build_objective(cfg.objective, list(granularities), has_report=has_report, embed_dim=16)


def test_options_reach_the_losses():
    assert _objective("mgll", ["objective.mgll.alpha_kl=0.25"]).loss.alpha_kl == 0.25
    mgca = _objective("mgca", ["objective.mgca.num_prototypes=4", "objective.mgca.weight_low=0.2"])
    assert mgca.loss.prototypes.shape[0] == 4 and mgca.weight_low == 0.2
    both = _objective("mgca+mgll", ["objective.mgca.num_prototypes=4", "objective.mgll.alpha_clip=2"])
    assert both.loss.lambda_ita == 0.0 and both.mgll.loss.alpha_clip == 2.0  # ITA is replaced by MGLL
    assert _objective("clip", has_report=False).text == "abnormality"
    assert _objective("clip").text == "report"


@pytest.mark.parametrize(("name", "overrides", "granularities", "has_report", "message"), [
    ("mgca", [], ["abnormality"], False, "mgca objective aligns words with image regions and needs reports"),
    ("mgca+mgll", [], ["abnormality"], False, "mgca\\+mgll objective aligns words"),
    ("mgca+mgll", [], [], True, "mgca\\+mgll objective needs at least one granularity"),
    ("mgll", [], [], True, "mgll objective needs at least one granularity"),
    ("clip", [], [], False, "clip objective needs a report or at least one granularity"),
    ("clip", ["objective.clip.text=finding"], ["abnormality"], True, "neither 'report' nor one of"),
    ("clip", ["objective.clip.text=report"], ["abnormality"], False, "the data has no reports"),
])
def test_what_the_data_lacks_is_named(name, overrides, granularities, has_report, message):
    with pytest.raises(ValueError, match=message):
        _objective(name, overrides, granularities, has_report)


def test_bad_objective_options_are_named():
    with pytest.raises(ConfigError, match="objective.mgca: .*weight_low must be below weight_high"):
        load_config("tiny-mgca", ["objective.mgca.weight_low=0.95"])
    with pytest.raises(ConfigError, match="objective.mglll: unknown key"):
        load_config("tiny-mgll", ["objective.mglll.alpha_kl=1"])
    with pytest.raises(ConfigError) as e:
        load_config("tiny-mgll", ["objective.name=mglll"])
    assert f"objective.name: unknown objective; registered: {', '.join(OBJECTIVES)} (got 'mglll')" in str(e.value)
