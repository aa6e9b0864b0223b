"""Config validation: every mistake names its key and, for choices, the allowed values."""

import copy
from pathlib import Path

import pytest
import yaml

from iclscope.core.config import ConfigError, DatasetSpec
from iclscope.core.validate import validate_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def broken(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return str(err.value)


def test_default_config_is_valid_and_gets_defaults():
    cfg = validate_config(DEFAULT)
    assert cfg["models"]["smollm2-135m"]["revision"] == "main"  # schema default filled in
    assert cfg["datasets"]["tweets"]["prompts"]["n_test"] == 100
    assert cfg["decodability"]["k"] == 10


@pytest.mark.parametrize("path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    """Full configs on their own; an overlay (no `models`) merged over config.yaml, as Snakemake merges
    `--configfile config.yaml <overlay>`."""
    from snakemake.utils import update_config

    example = yaml.safe_load(path.read_text())
    if "models" not in example:
        merged = yaml.safe_load((REPO / "config.yaml").read_text())
        update_config(merged, example)
        assert merged != yaml.safe_load((REPO / "config.yaml").read_text())
        example = merged
    validate_config(example)


def test_wrong_enum_names_key_and_allowed_values():
    msg = broken(lambda c: c["datasets"]["tweets"].update(kind="classify"))
    assert "datasets.tweets.kind" in msg and "'classification'" in msg and "'generation'" in msg


def test_unknown_key_is_named_with_known_keys():
    msg = broken(lambda c: c["models"]["smollm2-135m"].update(batchsize=4))
    assert "models.smollm2-135m" in msg and "'batchsize'" in msg and "batch_size" in msg


def test_wrong_type_names_key():
    msg = broken(lambda c: c["datasets"]["tweets"]["prompts"].update(n_test="many"))
    assert "datasets.tweets.prompts.n_test" in msg and "type" in msg


def test_missing_required_key_for_source():
    msg = broken(lambda c: c["models"]["smollm2-135m"].update(source="hub"))
    assert "models.smollm2-135m" in msg and "'id'" in msg


def test_template_must_end_with_label():
    msg = broken(lambda c: c["datasets"]["tweets"]["prompts"].update(template="{label}: {text}"))
    assert "datasets.tweets.prompts.template" in msg and "end with {label}" in msg


def test_reweighting_needs_enough_train_prompts_per_class():
    msg = broken(lambda c: c["datasets"]["tweets"]["prompts"].update(n_train=5))
    assert "datasets.tweets.prompts.n_train" in msg and "aux_per_class=4" in msg and ">= 8" in msg
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["tweets"]["prompts"]["n_train"] = 5
    cfg["anchors"]["reweighting"]["enabled"] = False
    validate_config(cfg)  # not needed when re-weighting is off


def test_tsft_held_out_and_test_prompts_cover_every_class():
    def three_classes_with_tsft(c, **tsft):
        c["datasets"]["tweets3"]["methods"] = ["tsft"]
        c["tsft"].update(tsft)

    msg = broken(lambda c: three_classes_with_tsft(c, n_val=2))
    assert "tsft.n_val" in msg and "3 classes" in msg and "tweets3" in msg
    assert "tsft.eval_every" in broken(lambda c: c["tsft"].update(eval_every=0))
    cfg = copy.deepcopy(DEFAULT)
    three_classes_with_tsft(cfg, n_val=2, enabled=False)
    validate_config(cfg)  # not needed when TS-FT is off


def test_toy_regression_shapes_are_checked_before_any_job():
    msg = broken(lambda c: c["toy_regression"].update(d_model=30, n_heads=4, n_bases=5))
    assert "toy_regression.d_model" in msg and "toy_regression.dim" in msg


def test_classification_needs_two_classes():
    msg = broken(lambda c: c["datasets"]["tweets"].update(classes={"negative": " negative"}))
    assert "datasets.tweets.classes" in msg


def test_synthetic_family_must_be_generation():
    msg = broken(lambda c: c["datasets"]["words"].update(kind="classification"))
    assert "datasets.words.kind" in msg and "generation" in msg


def test_bad_wildcard_name():
    msg = broken(lambda c: c["models"].update({"my model/1": {"source": "wheel", "package": "x"}}))
    assert "my model/1" in msg


def test_all_problems_reported_at_once():
    def two(c):
        c["extract"]["store_dtype"] = "bfloat16"
        c["decodability"]["k"] = 0

    msg = broken(two)
    assert "extract.store_dtype" in msg and "decodability.k" in msg


def test_dataset_spec_identity_ignores_prompts():
    cfg = validate_config(DEFAULT)
    a = DatasetSpec.from_config("tweets", cfg["datasets"]["tweets"])
    cfg["datasets"]["tweets"]["prompts"]["n_test"] = 7
    b = DatasetSpec.from_config("tweets", cfg["datasets"]["tweets"])
    assert a.identity() == b.identity() and a.prompts != b.prompts


def test_dataset_spec_identity_ignores_methods():
    """Which methods run on a dataset does not change its normalised table (nor its cache key)."""
    cfg = validate_config(DEFAULT)
    a = DatasetSpec.from_config("tweets", cfg["datasets"]["tweets"])
    b = DatasetSpec.from_config("tweets", {**cfg["datasets"]["tweets"], "methods": ["aucroc"]})
    assert a.identity() == b.identity() and b.runs("aucroc") and not b.runs("saliency") and a.runs("saliency")


def test_methods_must_apply_to_the_dataset_kind():
    message = broken(lambda c: c["datasets"]["words"].update(methods=["saliency"]))
    assert "datasets.words.methods" in message and "generation" in message and "patching" in message
    message = broken(lambda c: c["datasets"]["words"].update(methods=["nonsense"]))
    assert "datasets.words.methods" in message and "layer_lora" in message


def test_a_name_given_twice_is_an_error_not_a_silent_overwrite(tmp_path):
    from iclscope.core.validate import load_config

    text = (REPO / "config.yaml").read_text()
    block = text[text.index("  words:\n") : text.index("\n\n", text.index("  words:\n"))]
    path = tmp_path / "config.yaml"
    path.write_text(text.replace(block, block + "\n" + block.replace("n_per_task: 200", "n_per_task: 20")))
    with pytest.raises(ConfigError, match=r"the key 'words' appears twice in one mapping \(lines \d+ and \d+\)"):
        load_config(path)
    assert load_config(REPO / "config.yaml")["datasets"]["words"]["n_per_task"] == 200


def test_an_unsupported_local_architecture_is_refused_at_validation(tmp_path):
    """Before any job: the architecture is named, with the reason and the supported list."""
    import json

    from iclscope.core.validate import load_config

    model = tmp_path / "mamba"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["models"] = {"mine": {"source": "local", "path": str(model)}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "models.mine.path" in message and "MambaForCausalLM" in message and "no softmax attention" in message
    assert "LlamaForCausalLM" in message  # the supported list
