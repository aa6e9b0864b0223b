"""The settings path (iclscope.core.jobs): complete and minimal job settings, code digests that follow
imports and ignore comments, scripts that read only their params, defaults written once."""

import ast
import copy
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from iclscope.core import jobs
from iclscope.core.config import DatasetSpec, ModelSpec, PromptSpec, TaggingSettings
from iclscope.core.validate import load_config, load_schema, validate_config
from iclscope.data.synthetic import SparseRegressionTask
from iclscope.methods.anchors.compression import AnchorCompressionSettings
from iclscope.methods.anchors.error_diagnosis import ErrorDiagnosisSettings
from iclscope.methods.decodability.layer_lora import LayerLoRASettings
from iclscope.methods.decodability.toy_regression import RegressionTraining
from iclscope.methods.entropy.measures import EntropySettings
from iclscope.methods.entropy.toy_lm import ToyTraining
from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid
from iclscope.methods.taskspace.tsft import TSFTSettings
from iclscope.model.extract import ExtractSettings

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
DEFAULT = load_config(REPO / "config.yaml")
MODEL = next(iter(DEFAULT["models"]))


def job(rule, config=DEFAULT, **wc):
    return jobs.settings(config, rule, {"model": MODEL, "dataset": "tweets", **wc})


def changed(path: str, value) -> dict:
    """The default config with one key (dotted path) changed, validated again."""
    raw = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    return validate_config(raw)


# --- minimal keys: a method keys on what it reads and on nothing else


@pytest.mark.parametrize(
    ("key", "value", "reruns", "stays"),
    [
        ("anchors.reweighting.epochs", 3, {"reweighting"}, {"saliency", "isolation", "error_diagnosis", "extract"}),
        ("anchors.word_k", 3, {"isolation", "icicl", "anchor_compression"}, {"saliency", "reweighting", "extract"}),
        ("anchors.compression.n_random_draws", 3, {"anchor_compression"}, {"isolation", "saliency", "icicl"}),
        ("anchors.saliency_prompts_per_seed", 5, {"saliency"}, {"isolation", "reweighting"}),
        (
            "models.smollm2-135m.dtype",
            "bfloat16",
            {
                "extract",
                "saliency",
                "isolation",
                "reweighting",
                "extract_anchors",
                "icicl",
                "tsft",
                "patching",
                "token_states",
                "error_diagnosis",
            },
            {"prepare_model", "icl_accuracy", "taskspace"},
        ),
        ("models.smollm2-135m.batch_size", 3, set(), {"extract", "saliency", "icicl", "prepare_model"}),
        ("models.smollm2-135m.revision", "v2", set(), {"extract", "prepare_model"}),  # no revision in a wheel
        ("tsft.lam", 0.9, {"tsft"}, {"icicl", "taskspace"}),
        ("icicl.k", 2, {"icicl"}, {"tsft", "taskspace"}),
        ("decodability.k", 3, {"decodability", "layer_lora_summary"}, {"icl_accuracy", "extract"}),
        ("extract.shards", 2, set(), {"extract"}),
        ("entropy.n_bins", 7, {"entropy", "toy_lm_entropy"}, {"token_states"}),
    ],
)
def test_a_key_reruns_exactly_the_methods_that_read_it(key, value, reruns, stays):
    new = changed(key, value)
    for rule in reruns | stays:
        wc = {"size": "small", "arm": "space", "seed": "0"}
        differs = jobs.settings(DEFAULT, rule, {"model": MODEL, "dataset": "tweets", **wc}) != jobs.settings(
            new, rule, {"model": MODEL, "dataset": "tweets", **wc}
        )
        assert differs == (rule in reruns), (key, rule)


def test_a_fixed_config_gives_every_rule_the_same_settings():
    """The Snakefile's FixedConfig computes each model's settings once; every rule's settings equal the
    plain config's (also with a per-model layer override, and after asking for another model first)."""
    raw = copy.deepcopy(DEFAULT)
    raw["models"]["other"] = {**raw["models"][MODEL], "layers": {"icicl.inject_layer": 1}}
    config = validate_config(raw)
    fixed = jobs.FixedConfig(config)
    for model in ("other", MODEL, "other"):
        for rule in jobs.RULE_SETTINGS:
            wc = {"model": model, "dataset": "tweets", "size": "small", "arm": "space", "seed": "0"}
            assert jobs.as_json(jobs.settings(fixed, rule, wc)) == jobs.as_json(jobs.settings(config, rule, wc)), rule
    assert {model for _, model in fixed.memo} == {"other", MODEL}


def test_tsft_baseline_does_not_key_on_lambda():
    new = changed("tsft.lam", 0.9)
    assert job("tsft", arm="baseline", seed="0") == job("tsft", new, arm="baseline", seed="0")
    assert job("tsft", arm="baseline", seed="0")["tsft"]["lam"] == 0.0
    assert job("tsft", arm="space", seed="0") != job("tsft", new, arm="space", seed="0")


def test_settings_are_complete_model_specs_with_defaults():
    model = job("saliency")["model"]
    for key in ("source", "package", "file", "dtype", "device", "device_map"):
        assert key in model, key
    assert "revision" not in model  # a wheel's GGUF file has no revision
    hub = validate_config({**DEFAULT, "models": {"m": {"source": "hub", "id": "org/m", "revision": "step1"}}})
    assert jobs.model_settings(hub, "m") == {
        "source": "hub",
        "id": "org/m",
        "revision": "step1",
        "file": None,
        "dtype": "auto",
        "device": "auto",
        "device_map": "none",
    }
    assert not set(model) & set(jobs.RUNTIME_MODEL_KEYS)
    spec = jobs.Job(job("icicl"), {"model": MODEL, "dataset": "tweets"}, {"batch_size": 3}).model()
    assert (spec.batch_size, spec.dtype) == (3, DEFAULT["models"][MODEL]["dtype"])
    assert jobs.Job(job("icicl"), {"model": MODEL, "dataset": "tweets"}).dataset().prompts.template


def test_every_script_rule_of_the_workflow_has_settings_or_reads_only_inputs():
    """A script that reads a config section must get it through RULE_SETTINGS (its rule's settings)."""
    for script in SCRIPTS.glob("*.py"):
        source = script.read_text()
        if "job_of(snakemake)" in source:
            rule = script.stem
            assert rule in jobs.RULE_SETTINGS or jobs.family_section(DEFAULT, rule) or rule in ("extract",), script.name


def test_no_script_reads_the_config():
    offenders = [s.name for s in SCRIPTS.glob("*.py") if "snakemake.config" in s.read_text()]
    assert offenders == []


# --- code in the key


def test_code_digest_follows_imports_transitively():
    modules = jobs.package_modules(SCRIPTS / "extract.py")
    assert {"model.extract", "model.capture", "model.models", "core.store", "core.config"} <= set(modules)
    assert {"", "core", "model"} <= set(modules)  # the __init__ of every package on the way
    assert "report.plots" not in modules
    assert "report.plots" in jobs.package_modules(SCRIPTS / "figure.py")
    assert "model.capture" not in jobs.package_modules(SCRIPTS / "figure.py")


def _package_copy(tmp_path) -> Path:
    pkg = tmp_path / "iclscope"
    shutil.copytree(jobs.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def _digest_in(pkg: Path, script: Path) -> str:
    """The digest as a copy of the package at `pkg` computes it (a fresh import of jobs' functions)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "iclscope_copy", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["iclscope_copy"] = module
    try:
        spec.loader.exec_module(module)
        copy_jobs = importlib.import_module("iclscope_copy.core.jobs")
        return copy_jobs.code_digest(script)
    finally:
        for name in [n for n in sys.modules if n.startswith("iclscope_copy")]:
            del sys.modules[name]


def test_comment_and_docstring_edits_keep_the_digest_code_edits_change_it(tmp_path):
    pkg = _package_copy(tmp_path)
    extract, figure = SCRIPTS / "extract.py", SCRIPTS / "figure.py"
    before = (_digest_in(pkg, extract), _digest_in(pkg, figure))
    capture = pkg / "model" / "capture.py"
    text = capture.read_text()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree)
    capture.write_text(text.replace(doc.splitlines()[0], "A reworded first line.", 1) + "\n# a comment\n")
    assert (_digest_in(pkg, extract), _digest_in(pkg, figure)) == before
    capture.write_text(text + "\nEXTRA_CONSTANT = 1\n")
    assert _digest_in(pkg, extract) != before[0]
    assert _digest_in(pkg, figure) == before[1]  # a figure does not run the hook layer
    capture.write_text(text)
    (pkg / "report" / "plots.py").write_text((pkg / "report" / "plots.py").read_text() + "\nEXTRA_CONSTANT = 1\n")
    assert _digest_in(pkg, figure) != before[1]
    assert _digest_in(pkg, extract) == before[0]


def test_a_version_bump_reruns_nothing(tmp_path):
    """The version is provenance, not code: bumping it keeps every digest, the digest of a model
    stage that records it included; any other edit of the package's __init__ (every script runs
    it) changes them all."""
    pkg = _package_copy(tmp_path)
    scripts = [SCRIPTS / "extract.py", SCRIPTS / "figure.py"]
    before = [_digest_in(pkg, s) for s in scripts]
    version = pkg / "core" / "version.py"
    text = version.read_text()
    assert '__version__ = "' in text
    version.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "99.0.0"', text))
    assert [_digest_in(pkg, s) for s in scripts] == before
    assert "core.version" not in jobs.package_modules(SCRIPTS / "extract.py")  # provenance, not code
    init = pkg / "__init__.py"
    text = init.read_text()
    init.write_text(text + "\nEXTRA_CONSTANT = 1\n")
    assert all(_digest_in(pkg, s) != b for s, b in zip(scripts, before, strict=True))


# what runs once before any job (whole-config validation, computing settings, resolving layer shares,
# reading a model's depth, the plan, resources), not inside one: a job receives its results as params
PLANNING_ONLY = ("core.validate", "core.jobs", "core.layers", "core.model_config", "core.plan", "core.resources")


def test_validation_and_planning_are_in_no_jobs_code_digest():
    """No script runs the config validation or the planning code, directly or transitively, so
    rewording a validation message or changing how a depth is read reruns no stored product; the
    specs a script builds (core.config) and its settings reader (core.job) stay in."""
    scripts = sorted(SCRIPTS.glob("*.py"))
    readers = [s for s in scripts if "job_of(snakemake)" in s.read_text()]
    assert len(readers) > 20
    for script in scripts:
        modules = set(jobs.package_modules(script))
        assert modules.isdisjoint(PLANNING_ONLY), (script.name, sorted(modules & set(PLANNING_ONLY)))
    for script in readers:
        assert {"core.job", "core.config"} <= set(jobs.package_modules(script)), script.name
    assert {"core.model_files", "core.architectures"} <= set(jobs.package_modules(SCRIPTS / "extract.py"))


def test_a_validation_edit_reruns_nothing_a_spec_edit_reruns_its_readers(tmp_path):
    pkg = _package_copy(tmp_path)
    scripts = [SCRIPTS / f"{s}.py" for s in ("extract", "prepare_model", "icl_accuracy", "figure")]
    before = [_digest_in(pkg, s) for s in scripts]
    for module in PLANNING_ONLY:
        path = pkg.joinpath(*module.split(".")).with_suffix(".py")
        path.write_text(path.read_text() + "\nEXTRA_CONSTANT = 1\n")
    assert [_digest_in(pkg, s) for s in scripts] == before
    config = pkg / "core" / "config.py"
    config.write_text(config.read_text() + "\nEXTRA_CONSTANT = 1\n")
    after = [_digest_in(pkg, s) for s in scripts]
    assert [a != b for a, b in zip(after, before, strict=True)] == [True, True, True, False]


def test_the_parse_cache_is_keyed_on_content_never_on_dates(tmp_path, monkeypatch):
    """Parses are remembered across processes by the file's full text: an edit that keeps the size and
    the modification time still changes the digest; a hit gives the digest a fresh parse gives."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pkg = _package_copy(tmp_path)
    extract = SCRIPTS / "extract.py"
    capture = pkg / "model" / "capture.py"
    capture.write_text(capture.read_text() + "\nEXTRA_CONSTANT = 1\n")
    one = _digest_in(pkg, extract)
    assert (tmp_path / "cache" / "iclscope" / "code-parses.json").is_file()
    assert _digest_in(pkg, extract) == one  # a new process: every parse from the cache
    st = capture.stat()
    capture.write_text(capture.read_text().replace("EXTRA_CONSTANT = 1", "EXTRA_CONSTANT = 2"))
    os.utime(capture, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert capture.stat().st_size == st.st_size and capture.stat().st_mtime_ns == st.st_mtime_ns
    two = _digest_in(pkg, extract)
    assert two != one
    (tmp_path / "cache").rename(tmp_path / "elsewhere")  # no cache: parsed afresh, same digests
    assert _digest_in(pkg, extract) == two


def test_checkouts_of_one_version_share_the_parse_cache(tmp_path, monkeypatch):
    """The key holds a file's place relative to the package, not its absolute path: a second checkout
    of the same code adds no entry (two test copies or clones no longer evict each other), while an
    edit in one of them adds the edited file's entry alone."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "iclscope" / "code-parses.json"
    extract = SCRIPTS / "extract.py"
    one = _digest_in(_package_copy(tmp_path / "a"), extract)
    entries = set(json.loads(cache.read_text()))
    second = _package_copy(tmp_path / "b")
    assert _digest_in(second, extract) == one
    assert set(json.loads(cache.read_text())) == entries
    capture = second / "model" / "capture.py"
    capture.write_text(capture.read_text() + "\nEXTRA_CONSTANT = 1\n")
    assert _digest_in(second, extract) != one
    assert len(set(json.loads(cache.read_text())) - entries) == 1


def test_a_digest_from_the_parse_cache_parses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    script = SCRIPTS / "figure.py"

    def fresh():
        monkeypatch.setattr(jobs, "_PARSES", None)
        jobs._parsed.cache_clear()
        jobs.code_digest.cache_clear()

    fresh()
    expected = jobs.code_digest(script)
    fresh()

    def no_parse(*args):
        raise AssertionError("parsed although cached")

    monkeypatch.setattr(jobs, "_parse", no_parse)
    try:
        assert jobs.code_digest(script) == expected
    finally:
        fresh()


def test_code_digest_is_cheap_and_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, time; sys.path.insert(0, 'workflow'); t = time.perf_counter(); "
        "from iclscope.core import jobs; "
        "from pathlib import Path; [jobs.code_digest(p) for p in Path('workflow/scripts').glob('*.py')]; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- defaults once: every settings dataclass default equals the schema's


def _schema_defaults(node: dict, schema: dict) -> dict:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return {k: v["default"] for k, v in node.get("properties", {}).items() if "default" in v}


def _section(path: str) -> dict:
    schema = load_schema()
    node = {"properties": schema["properties"], "$defs": schema["$defs"]}
    for part in path.split("."):
        node = node["properties"][part] if not part.startswith("$") else schema["$defs"][part[1:]]
    return _schema_defaults(node, schema)


@pytest.mark.parametrize(
    ("cls", "section"),
    [
        (ModelSpec, "$model"),
        (PromptSpec, "$prompts"),
        (DatasetSpec, "$dataset"),
        (ExtractSettings, "extract"),
        (ICICLSettings, "icicl"),
        (SweepGrid, "icicl.sweep"),
        (TSFTSettings, "tsft"),
        (LayerLoRASettings, "layer_lora"),
        (ErrorDiagnosisSettings, "anchors.error_diagnosis"),
        (AnchorCompressionSettings, "anchors.compression"),
        (EntropySettings, "entropy"),
        (ToyTraining, "entropy.training"),
        (SparseRegressionTask, "toy_regression"),
        (RegressionTraining, "toy_regression"),
    ],
)
def test_settings_defaults_equal_the_schema(cls, section):
    defaults = _section(section)
    mismatched = {}
    for f in dataclasses.fields(cls):
        if f.name not in defaults or f.name == "prompts":  # a nested spec, compared on its own
            continue
        if f.default is not dataclasses.MISSING:
            mine = f.default
        elif f.default_factory is not dataclasses.MISSING:
            mine = f.default_factory()
        else:
            continue
        theirs = defaults[f.name]
        if (list(mine) if isinstance(mine, tuple) else mine) != theirs:
            mismatched[f.name] = (mine, theirs)
    assert mismatched == {}, f"{cls.__name__} defaults differ from the schema's (dataclass, schema): {mismatched}"


def test_word_k_default_of_icicl_is_the_anchors_one():
    assert ICICLSettings.__dataclass_fields__["word_k"].default == _section("anchors")["word_k"]
    assert AnchorCompressionSettings.__dataclass_fields__["word_k"].default == _section("anchors")["word_k"]


def test_tagging_settings_defaults_equal_the_schema():
    schema = load_schema()
    tagging = schema["$defs"]["dataset"]["properties"].get("tagging", {})
    defaults = tagging.get("default", {}) or _schema_defaults(tagging, schema)
    for name, value in defaults.items():
        assert getattr(TaggingSettings(), name) == value, name
