# Shared glue: config validation (before any job), wildcard constraints, target lists (from
# iclscope.core.plan) and each job's params (from iclscope.core.jobs: its settings and its code digest).
# No torch / transformers / HDF5 here: this file is parsed on every call and every SLURM job.
import errno
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from iclscope.core.config import ConfigError, DatasetSpec, ModelSpec  # noqa: E402
from iclscope.core.validate import check_unique_keys, validate_config  # noqa: E402
from iclscope.core import jobs  # noqa: E402
from iclscope.core import resources as res  # noqa: E402
from iclscope.core.layers import check_all as check_layer_settings  # noqa: E402
from iclscope.core import families  # noqa: E402
from iclscope.core.families import FAMILIES, RULES_FILES  # noqa: E402
from iclscope.core.plan import LAYER_LORA_ARMS, TSFT_ARMS, Plan  # noqa: E402

try:
    for _configfile in workflow.configfiles:
        check_unique_keys(_configfile)
    _validated = validate_config(config)
    check_layer_settings(_validated)  # every layer setting against every model's depth, before any job
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(_validated)


def check_writable(directory: Path) -> None:
    """Stop before any job when outputs could not be written (read-only mount, no permission)."""
    probe = directory / f".iclscope-write-probe-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise WorkflowError(
            f"{directory.resolve()} is not writable ({exc.strerror}): iclscope writes results/, logs/ and "
            ".snakemake/ there. Run from a directory you can write to (or pass --directory), or fix its "
            "permissions"
        ) from None


for _directory in (Path("."), Path("results"), Path("logs")):
    if _directory.is_dir():
        check_writable(_directory)

PLAN = Plan(config)
MODELS = PLAN.models
DATASETS = PLAN.datasets
SHARDS = config["extract"]["shards"]
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)) if MODELS else "none",
    dataset="|".join(map(re.escape, DATASETS)) if DATASETS else "none",
    arm="space|baseline",
    seed=r"\d+",


# --- params: what a job reads (keyed), what it runs (keyed), what only sets its speed (resources)


# the validated config, fixed from here on: each model's settings and layers computed once, not per job
JOB_CONFIG = jobs.FixedConfig(config)


def settings_of(rule):
    """params.settings of `rule`'s jobs: the complete settings of the job (iclscope/core/jobs.py)."""
    return lambda wc: jobs.as_json(jobs.settings(JOB_CONFIG, rule, wc))


def code_of(script):
    """params.code: a digest of the package modules `script` runs (comments and docstrings excluded)."""
    return jobs.code_digest(SCRIPTS / script)


# --- resources: every job's memory, GPUs and runtime, from the model's config.json and the job's
# work (iclscope/core/resources.py). Partitions, account and GPU type: profiles/slurm/config.yaml.


def _prompt_stats(path):
    """(prompts, mean tokens, longest, demos per prompt) of a prompts table: two columns, no pandas."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in ("n_tokens", "label_pos") if c in names])
    tokens = table.column("n_tokens").to_pylist() if "n_tokens" in names else [128]
    demos = max((len(x or []) for x in table.column("label_pos").to_pylist()), default=0) if "label_pos" in names else 0
    return table.num_rows, sum(tokens) / max(1, len(tokens)), max(tokens, default=128), demos


def _manifest(model):
    return f"results/models/{model}.json"


def _architecture(model):
    """The model's Architecture (config.json / GGUF header, no weights), or None while not on this machine."""
    spec = config["models"].get(model)
    return res.read_architecture(spec, _manifest(model)) if spec else None


def _stage_resources(stage, wc, input, attempt):
    spec = config["models"][wc.model]
    manifest = _manifest(wc.model)
    arch = _architecture(wc.model)
    if arch is None:
        if manifest in input:  # not prepared yet: Snakemake evaluates again at submission (TBD until then)
            raise FileNotFoundError(errno.ENOENT, "model not prepared yet", manifest)
        return res.fallback(stage, attempt, spec["mem_mb"], spec["gpus"])
    dataset = config["datasets"].get(getattr(wc, "dataset", None)) or {}
    prompts = getattr(input, "prompts", None) or (
        f"results/prompts/{wc.model}/{wc.dataset}.parquet" if hasattr(wc, "dataset") else None)
    n, mean, longest, demos = 0, 128.0, 192, 0
    if prompts and Path(prompts).exists():
        n, mean, longest, demos = _prompt_stats(prompts)
    elif prompts and prompts in input:
        raise FileNotFoundError(errno.ENOENT, "prompts not built yet", prompts)
    work = res.Work(n_prompts=n, tokens_per_prompt=mean, max_tokens=longest, batch_size=spec["batch_size"],
                    max_batch_tokens=spec["max_batch_tokens"], n_classes=len(dataset.get("classes") or {}),
                    n_demos=demos, generation=dataset.get("kind") == "generation")
    return res.model_stage(stage, arch, spec["dtype"], work, config, dataset, attempt=attempt,
                           device=spec["device"], gpus=spec["gpus"], mem_mb=spec["mem_mb"])


def model_stage_resources(stage):
    """`resources:` of a model stage (use as `**model_stage_resources("extract")`): host memory, GPUs,
    runtime from the model and the job's prompts, x attempt; batch size and token budget pass through."""

    def field(name):
        return lambda wc, input, attempt: getattr(_stage_resources(stage, wc, input, attempt), name)

    return dict(mem_mb=field("mem_mb"), runtime=field("runtime"), gpu=field("gpus"),
                batch_size=batch_size, max_batch_tokens=max_batch_tokens)


def model_threads(wc):
    """`threads:` of a model stage, from the model's width (iclscope.core.resources.model_threads)."""
    return res.model_threads(_architecture(wc.model))


# Figures read one small table each: on SLURM they run many to an sbatch job (group SMALL_JOBS,
# profiles/slurm's group-components) so that a lab run submits hundreds of jobs, not thousands.
SMALL_JOBS = "small_cpu"


def small_job_resources():
    return dict(mem_mb=lambda wc, attempt: 1000 * attempt, runtime=lambda wc, attempt: 10 * attempt)


def cpu_stage_resources(stage, copies=None):
    """`resources:` of a CPU stage of one model x dataset: memory scaled by d_model, layers and prompts."""

    def compute(wc, attempt):
        model = getattr(wc, "model", None)
        arch = _architecture(model)
        prompts = Path(f"results/prompts/{model}/{getattr(wc, 'dataset', '')}.parquet")
        n = None
        if prompts.exists():
            import pyarrow.parquet as pq

            n = pq.read_metadata(prompts).num_rows
        return res.cpu_stage(stage, arch, n, config, attempt, copies)

    return dict(mem_mb=lambda wc, attempt: compute(wc, attempt).mem_mb,
                runtime=lambda wc, attempt: compute(wc, attempt).runtime)


def batch_size(wc):
    return MODELS[wc.model].batch_size


def max_batch_tokens(wc):
    return MODELS[wc.model].max_batch_tokens


def local_source(wildcards):
    """A local dataset file is an input: editing it reruns prepare_dataset (and changes its store key).
    (A save_to_disk directory is left out: Snakemake would compare only the directory's mtime.)"""
    path = DATASETS[wildcards.dataset].path
    return [path] if path and Path(path).expanduser().is_file() else []


# --- target lists: which datasets run what (iclscope/core/plan.py), which tables and figures each
# family makes (iclscope/core/families.py)


def paths(pattern, datasets, **more):
    return expand(pattern, model=MODELS, dataset=datasets, **more)


def family_targets(target):
    """Every table and figure of the families whose named target rule is `target` (core/families.py)."""
    return PLAN.targets(families=[f.name for f in FAMILIES if target in f.targets])


def icicl_sweep_targets(datasets=None):
    """IC-ICL's validation sweep (docs/methods.md §1.4): table and figure; in `all` when icicl.sweep.enabled."""
    datasets = PLAN.icicl_sweep() if datasets is None else datasets
    return (paths("results/icicl/{model}/{dataset}/sweep.parquet", datasets)
            + paths("results/figures/{model}/{dataset}/icicl_sweep.png", datasets))


def tsft_runs(model, dataset):
    """TS-FT's runs of one model x dataset, as expand() lists them (a comprehension: asked once per job)."""
    return [f"results/tsft/{model}/{dataset}/{arm}-seed{seed}" for arm in TSFT_ARMS for seed in PLAN.tsft_seeds()]


def activation_targets():
    return paths("results/activations/{model}/{dataset}.h5", DATASETS)


def metric_targets():
    """Every metric table of every family (the `metrics` target)."""
    return PLAN.targets("tables")


def atlas_tables(model, dataset):
    return [f"results/metrics/{model}/{dataset}/{name}.parquet" for name in PLAN.atlas_tables(dataset)]


def atlas_inputs(wildcards):
    """The layer-wise tables of every dataset of one model (one atlas per model)."""
    return [f for d in DATASETS for f in atlas_tables(wildcards.model, d)]


def summary_tables():
    """Every table the headline summary reads: the atlas tables and the families' `summary` tables."""
    return [f"results/metrics/{m}/{d}/{name}.parquet" for m in MODELS for d in DATASETS
            for name in PLAN.summary_tables(d)]


def atlas_targets(pattern):
    """`pattern` for every model with a layer-wise table on some dataset."""
    return [pattern.format(model=m) for m in MODELS if any(atlas_tables(m, d) for d in DATASETS)]


def figure_targets():
    """Every figure of every family and every model's layer atlas (the `figures` target)."""
    return PLAN.targets("figures") + atlas_targets("results/figures/{model}/layer_atlas.png")


def summary_targets():
    return atlas_targets("results/figures/{model}/layer_atlas.png") + [
        "results/summary/headline.csv", "results/summary/peak_layers.csv", "results/summary/claims.csv"]


def all_targets():
    """Every activation file, table and figure, and the summary -- less those that a job of another of
    them reads: a figure's table, the summary's (and layer atlas's) tables, an activation file whose
    icl_accuracy table is planned. The same jobs, with half the inputs of `all`, each of which Snakemake
    matches against the rules' outputs on every call (a no-op plan of 50 models x 20 datasets)."""
    targets = PLAN.targets()
    read = PLAN.figure_inputs() | set(summary_tables())
    planned = set(targets)
    accuracy = paths("results/metrics/{model}/{dataset}/icl_accuracy.parquet", DATASETS)  # reads its .h5
    activations = [h5 for h5, table in zip(activation_targets(), accuracy, strict=True) if table not in planned]
    return activations + [f for f in targets if f not in read] + summary_targets()


def shard_of(wildcards):
    """'2-of-3' -> (2, 3); unsharded -> (1, 1)."""
    item = getattr(wildcards, "scatteritem", "1-of-1")
    i, n = item.split("-of-")
    return int(i), int(n)
