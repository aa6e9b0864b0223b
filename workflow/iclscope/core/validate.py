"""Whole-config validation: the JSON schema with its defaults, and every rule that spans keys.

`validate_config(raw)` is called by the Snakefile (workflow/rules/common.smk) and the CLI before any
job starts. It fills in the schema's defaults and raises `ConfigError` naming the offending key
(``datasets.tweets.kind``) and, for enumerations, the allowed values; then it runs the specs'
own checks (iclscope.core.config), the layer shares (iclscope.core.layers), a local model's declared
architecture (iclscope.core.architectures) and each family's rules (iclscope.core.families).

No job script imports this module (directly or through the package), so it is in no job's code
digest (iclscope.core.jobs): rewording a message or adding a check reruns no stored product. A job
receives the validated values through its params; what its script builds from them (ModelSpec,
DatasetSpec, ...) lives in iclscope.core.config. tests/unit/test_jobs.py checks that no script runs it.

No torch / transformers import here: the Snakefile imports this module at parse time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec
from iclscope.core.families import FAMILIES, METHODS_BY_KIND  # what `datasets.<name>.methods` may pick, per kind

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that `default` values are filled in while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                elif "$ref" in sub and name not in instance:
                    resolved = validator._resolver.lookup(sub["$ref"]).contents
                    if "default" in resolved:
                        instance[name] = copy.deepcopy(resolved["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(Draft202012Validator)


# libyaml's parser where PyYAML was built with it: 5-10x faster than the pure-Python one, which
# matters because the schema and the config are parsed on every `snakemake` call
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=_SafeLoader)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error) -> str:
    """One line per schema error: the key, what is wrong, what is allowed."""
    key = _key(error.absolute_path)
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"config key '{key}': {error.instance!r} is not allowed; use one of: {allowed}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; known keys here: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        where = f"config key '{key}'" if error.absolute_path else "the config"
        return f"{where}: missing required key '{missing}'"
    if error.validator == "type":
        return f"config key '{key}': {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "pattern" or error.validator == "propertyNames":
        return f"config key '{key}': {error.message} (names may use letters, digits, '_', '.', '-')"
    return f"config key '{key}': {error.message}"


def validate_config(raw: dict) -> dict:
    """Validate `raw` against the schema, fill defaults, check cross-field rules.

    Returns a new dict (the input is not modified). Raises ConfigError listing every problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping with at least 'models' and 'datasets'")
    config = copy.deepcopy(raw)
    validator = _DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = sorted({_describe(e) for e in errors})
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))
    from iclscope.core.layers import check_shares

    problems = check_shares(config)
    for name, spec in config["models"].items():
        try:
            ModelSpec.from_config(name, spec)
            declared_architecture_check(name, spec)
        except ConfigError as exc:
            problems.append(str(exc))
    for name, spec in config["datasets"].items():
        try:
            methods_check(name, spec)
            DatasetSpec.from_config(name, spec)
        except ConfigError as exc:
            problems.append(str(exc))
    for family in FAMILIES:  # each family's own rules, next to its entry (iclscope.core.families)
        for check in family.checks:
            problems += check(config)
    problems += icicl_settings_from_check(config)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


def icicl_settings_from_check(config: dict) -> list[str]:
    """icicl.settings_from: sweep (each dataset's icicl job runs with its own sweep's choices) needs a sweep
    that can choose: IC-ICL's soft tokens among the compressed task spaces ('identity' is the icicl_identity
    arm, the uncompressed reference), and no tuned key set in the config (the sweep would silently replace
    it). Defaults filled in: a tuned key is set when it differs from the schema's default."""
    from iclscope.core.jobs import ICICL_TUNED_KEYS

    icicl = config["icicl"]
    if icicl.get("settings_from") != "sweep" or not icicl.get("enabled", True):
        return []
    problems = []
    spaces = icicl["sweep"]["task_spaces"]
    if "identity" in spaces:
        compressed = [s for s in spaces if s != "identity"] or ["pool"]
        problems.append(
            f"config key 'icicl.sweep.task_spaces': {spaces} with icicl.settings_from: sweep; 'identity' is no "
            f"IC-ICL setting (the uncompressed icicl_identity arm, run beside it anyway): use e.g. {compressed}"
        )
    defaults = load_schema()["properties"]["icicl"]["properties"]
    budget = 1  # B = IC-ICL's grid (tuning_budget): every tuned arm scores at most B settings
    for key in ("depths", "states", "task_spaces", "label_line"):
        budget *= len(set(icicl["sweep"][key]))
    if budget < len(defaults["anchor_keep"]["enum"]):
        problems.append(
            f"config key 'icicl.sweep': a budget of {budget} setting(s) per tuned arm (depths x states x task_spaces "
            f"x label_line), below anchor_kv's {len(defaults['anchor_keep']['enum'])} kept sets: widen the grid"
        )
    for key in ICICL_TUNED_KEYS:
        if icicl.get(key) != defaults[key].get("default"):
            problems.append(
                f"config key 'icicl.{key}': {icicl[key]!r}, but icicl.settings_from: sweep chooses it per dataset "
                "on the validation split (icicl_sweep): remove it, or use settings_from: config"
            )
    for name, spec in config["models"].items():
        for key in spec.get("layers") or {}:
            if key.startswith("icicl.") and key.removeprefix("icicl.") in ICICL_TUNED_KEYS:
                problems.append(
                    f"config key 'models.{name}.layers.{key}': icicl.settings_from: sweep chooses this layer per "
                    "dataset on the validation split (icicl_sweep): remove it, or use settings_from: config"
                )
    return problems


def methods_check(name: str, spec: dict) -> None:
    """`datasets.<name>.methods` names only families that apply to the dataset's kind (a planning key:
    no job receives it, iclscope.core.jobs.PLANNING_DATASET_KEYS)."""
    methods, kind = spec.get("methods"), spec.get("kind", "classification")
    if methods is None:
        return
    applicable = METHODS_BY_KIND[kind]
    wrong = [m for m in methods if m not in applicable]
    if wrong:
        raise ConfigError(
            f"config key 'datasets.{name}.methods': {wrong} do not apply to a {kind} dataset "
            f"(these do: {sorted(applicable)})"
        )


def declared_architecture_check(name: str, spec: dict) -> None:
    """Refuse a local model whose config.json declares an architecture iclscope cannot serve, before
    any job (a hub model is checked by prepare_model, its first job, once its config is at hand)."""
    if spec.get("source") != "local" or not spec.get("path"):
        return
    path = Path(spec["path"]).expanduser() / "config.json"
    if not path.is_file():
        return  # a GGUF file or a missing directory: prepare_model says which
    try:
        model_config = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    architecture = (model_config.get("architectures") or [model_config.get("model_type") or "unknown"])[0]
    from iclscope.core.architectures import check_supported

    try:
        check_supported(architecture, model_config)
    except ConfigError as exc:
        raise ConfigError(f"config key 'models.{name}.path' ({spec['path']}): {exc}") from None


class _UniqueKeyLoader(_SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last, silently:
    two datasets or models under one name would quietly become one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{self.name}: the key '{key}' appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); YAML would silently keep only the second. Rename or "
                    "remove one of them (model and dataset names must be unique)"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def check_unique_keys(path: str | Path):
    """Raise ConfigError when a mapping of the YAML file `path` repeats a key; else the parsed data."""
    path = Path(path)
    loader = _UniqueKeyLoader(path.read_text())
    loader.name = str(path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        raw = check_unique_keys(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return validate_config(raw)
