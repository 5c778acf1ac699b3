from pathlib import Path

import pytest

from medgrain.models.factory import resolve_config
from medgrain.training.config import ConfigError, RunConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "medgrain" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # The resolved config round-trips through YAML unchanged.
    import yaml

    assert load_config(yaml.safe_load(cfg.to_yaml())) == cfg
    # Its model section resolves too (preset plus overrides), without building anything.
    resolve_config(cfg.model.preset, **cfg.model.overrides)


def test_mgll_configs_pool_text_as_their_source():
    def pooling(name):
        cfg = load_config(name)
        return resolve_config(cfg.model.preset, **cfg.model.overrides).text.pooling

    assert pooling("mgll-paper") == "flair-masked"
    assert pooling("mgll-original-code") == "flair"


def test_shipped_presets_by_name_and_overrides():
    cfg = load_config("tiny-mgll", ["optim.lr=3e-4", "train.epochs=2", "objective.mgll.alpha_kl=0.25"])
    assert cfg.optim.lr == 3e-4 and cfg.train.epochs == 2 and cfg.objective.mgll.alpha_kl == 0.25


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: {manifest: m.jsonl}\nobjective: {name: mgll, mgll: {alpha_kll: 1}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "objective.mgll.alpha_kll" in str(e.value) and "unknown key" in str(e.value)
    assert str(p) in str(e.value)


def test_bad_value_is_named_with_what_was_given(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: {manifest: m.jsonl}\nobjective: {name: mglll}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "objective.name" in str(e.value) and "mglll" in str(e.value)


def test_bad_override_and_missing_section():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config("tiny-clip", ["optim.lr"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("tiny-clip", ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="objective: required field|objective"):
        load_config({"data": {"manifest": "m.jsonl"}})
    with pytest.raises(ConfigError, match="config not found"):
        load_config("no-such-preset")


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
