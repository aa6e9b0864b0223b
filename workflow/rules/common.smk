# Shared glue: config validation (before any job), wildcard constraints, target lists and
# the params that make Snakemake's between-workflow cache key complete.
# No torch / transformers / HDF5 here: this file is parsed on every call and every SLURM job.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from iclscope.config import ConfigError, DatasetSpec, ModelSpec, check_unique_keys, validate_config  # noqa: E402
from iclscope import __version__ as ICLSCOPE_VERSION  # noqa: E402
from iclscope.lab_cache import seal_entries_when_stored  # noqa: E402

try:
    for _configfile in workflow.configfiles:
        check_unique_keys(_configfile)
    _validated = validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(_validated)

if getattr(workflow.workflow_settings, "cache", None):
    if not os.environ.get("SNAKEMAKE_OUTPUT_CACHE"):
        raise WorkflowError(
            "--cache (profiles/slurm sets it for prepare_model, prepare_dataset and extract) needs the "
            "environment variable SNAKEMAKE_OUTPUT_CACHE: the lab's shared cache directory, e.g. "
            "export SNAKEMAKE_OUTPUT_CACHE=/shared/lab/iclscope-cache (README: 'Sharing activations'); a "
            "directory of your own works too"
        )
    seal_entries_when_stored()  # entries are read-only once written (iclscope/lab_cache.py)



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

MODELS = {name: ModelSpec.from_config(name, spec) for name, spec in config["models"].items()}
DATASETS = {name: DatasetSpec.from_config(name, spec) for name, spec in config["datasets"].items()}
SHARDS = config["extract"]["shards"]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)) if MODELS else "none",
    dataset="|".join(map(re.escape, DATASETS)) if DATASETS else "none",
    arm="space|baseline",
    seed=r"\d+",


def as_json(obj):
    """Params are compared as strings; canonical JSON keeps the cache key stable."""
    return json.dumps(obj, sort_keys=True, default=str)


def model_identity(wildcards):
    return as_json(MODELS[wildcards.model].identity())


def local_source(wildcards):
    """A local dataset file is an input: editing it reruns prepare_dataset (and changes its cache key).
    (A save_to_disk directory is left out: Snakemake would compare only the directory's mtime.)"""
    path = DATASETS[wildcards.dataset].path
    return [path] if path and Path(path).expanduser().is_file() else []


def dataset_identity(wildcards):
    return as_json(DATASETS[wildcards.dataset].identity())


def extract_identity(wildcards):
    """Everything besides the input files that changes an activation file."""
    m = MODELS[wildcards.model]
    return as_json({"model": m.identity(), "dtype": m.dtype, "device_map": m.device_map,
                    "extract": {k: v for k, v in config["extract"].items() if k != "shards"},
                    "iclscope": ICLSCOPE_VERSION})


def running(method, names):
    """The datasets among `names` whose `methods:` key lets `method` run (null = all)."""
    return [n for n in names if DATASETS[n].runs(method)]


def task_families():
    """Datasets whose prompts span several tasks (decodability needs more than one)."""
    return [n for n, d in DATASETS.items() if d.kind == "generation" or d.task_column]


def task_family_datasets():
    """Task families that run decodability."""
    return running("decodability", task_families())


def patching_datasets():
    """Generation task families: their answers are generated, so a patched state can change them."""
    if not config["patching"]["enabled"]:
        return []
    return running("patching", [n for n in task_families() if DATASETS[n].kind == "generation"])


def classification_datasets():
    return [n for n, d in DATASETS.items() if d.kind == "classification"]


def taskspace_targets():
    return expand("results/metrics/{model}/{dataset}/compression.parquet", model=MODELS,
                  dataset=running("taskspace", classification_datasets()))


def icicl_targets():
    if not config["icicl"]["enabled"]:
        return []
    return expand("results/metrics/{model}/{dataset}/icicl.parquet", model=MODELS,
                  dataset=running("icicl", classification_datasets()))


def tsft_runs(model, dataset):
    return expand("results/tsft/{model}/{dataset}/{arm}-seed{seed}", model=model, dataset=dataset,
                  arm=["space", "baseline"], seed=config["tsft"]["seeds"])


def tsft_targets():
    if not config["tsft"]["enabled"]:
        return []
    return expand("results/metrics/{model}/{dataset}/tsft.parquet", model=MODELS,
                  dataset=running("tsft", classification_datasets()))


LAYER_LORA_ARMS = ["first", "last"]


def layer_lora_targets():
    """First-vs-last-layer LoRA (METHODS.md §4.5): table and figure per generation task family."""
    if not config["layer_lora"]["enabled"]:
        return []
    families = running("layer_lora", [n for n, d in DATASETS.items() if d.kind == "generation"])
    return [f"results/{kind}/{m}/{d}/layer_lora.{ext}" for m in MODELS for d in families
            for kind, ext in (("metrics", "parquet"), ("figures", "png"))]


def activation_targets():
    return expand("results/activations/{model}/{dataset}.h5", model=MODELS, dataset=DATASETS)


def metric_targets():
    targets = expand("results/metrics/{model}/{dataset}/icl_accuracy.parquet", model=MODELS, dataset=DATASETS)
    targets += expand("results/metrics/{model}/{dataset}/{name}.parquet", model=MODELS,
                      dataset=task_family_datasets(), name=["decodability", "decodability_fit"])
    targets += expand("results/metrics/{model}/{dataset}/patching.parquet", model=MODELS, dataset=patching_datasets())
    return targets


def anchor_datasets():
    """Classification datasets whose prompts have demonstrations (label positions)."""
    return [n for n in classification_datasets() if DATASETS[n].prompts.shots_per_class > 0]


def running_methods(dataset, methods):
    """The methods among `methods` that the dataset's `methods:` key lets run."""
    return [m for m in methods if DATASETS[dataset].runs(m)]


def anchor_methods():
    return ["aucroc", "saliency", "isolation"] + (["reweighting"] if config["anchors"]["reweighting"]["enabled"] else [])


def anchor_targets():
    return [f"results/{kind}/{m}/{d}/{name}.{ext}" for m in MODELS for d in anchor_datasets()
            for name in running_methods(d, anchor_methods()) for kind, ext in (("metrics", "parquet"), ("figures", "png"))]


def error_diagnosis_targets():
    """Predicted vs true confusion: anchor datasets with >= 3 classes (one class pair cannot be correlated)."""
    names = [d for d in running("error_diagnosis", anchor_datasets()) if len(DATASETS[d].class_names) >= 3]
    return [f"results/{kind}/{m}/{d}/error_diagnosis.{ext}" for m in MODELS for d in names
            for kind, ext in (("metrics", "parquet"), ("figures", "png"))]


def figure_targets():
    figures = expand("results/figures/{model}/{dataset}/{fig}.png", model=MODELS,
                     dataset=running("taskspace", classification_datasets()), fig=["compression", "task_space"])
    figures += expand("results/figures/{model}/{dataset}/decodability.png", model=MODELS,
                      dataset=task_family_datasets())
    figures += expand("results/figures/{model}/{dataset}/patching.png", model=MODELS, dataset=patching_datasets())
    if config["icicl"]["enabled"]:
        figures += expand("results/figures/{model}/{dataset}/icicl.png", model=MODELS,
                          dataset=running("icicl", classification_datasets()))
    if config["tsft"]["enabled"]:
        figures += expand("results/figures/{model}/{dataset}/tsft.png", model=MODELS,
                          dataset=running("tsft", classification_datasets()))
    return figures


CORPUS_KEYS = ("split", "max_tokens", "max_sentence_tokens", "seed")


def toy_corpus():
    """The dataset the toy LMs are trained on, or None."""
    training = config["entropy"]["training"]
    if not (config["entropy"]["enabled"] and training["enabled"]):
        return None
    return training["dataset"] or next(iter(config["entropy"]["datasets"]), None)


def toy_lm_sizes():
    return [size["name"] for size in config["entropy"]["training"]["sizes"]]


def toy_lm_settings(size):
    """What one toy LM's training and measures depend on: its size, the training, the binning, the corpus split."""
    entropy = config["entropy"]
    training = {k: v for k, v in entropy["training"].items() if k != "sizes"}
    return {"size": next(s for s in entropy["training"]["sizes"] if s["name"] == size), "training": training,
            **{k: entropy[k] for k in ("n_bins", "min_labels", "clip_quantile", "split")}}


def entropy_targets():
    if not config["entropy"]["enabled"]:
        return []
    targets = [f"results/{kind}/{m}/{d}/entropy.{ext}" for m in MODELS for d in config["entropy"]["datasets"]
               for kind, ext in (("metrics", "parquet"), ("figures", "png"))]
    if toy_corpus():
        targets += [f"results/metrics/toy/{toy_corpus()}/entropy_training.parquet",
                    f"results/figures/toy/{toy_corpus()}/entropy_training.png"]
    return targets


def atlas_tables(model, dataset):
    """The layer-wise metric tables this config produces for one model × dataset (what the atlas draws)."""
    names = []
    if dataset in task_family_datasets():
        names.append("decodability")
    if dataset in running("taskspace", classification_datasets()):
        names.append("compression")
    if dataset in anchor_datasets():
        names += running_methods(dataset, ["saliency", "aucroc", "isolation"])
    if config["entropy"]["enabled"] and dataset in config["entropy"]["datasets"]:
        names.append("entropy")
    return [f"results/metrics/{model}/{dataset}/{name}.parquet" for name in names]


def atlas_inputs(wildcards):
    return atlas_tables(wildcards.model, wildcards.dataset)


def summary_tables():
    """Every table the headline summary reads: the atlas tables, ICL accuracy, re-weighting, IC-ICL, TS-FT."""
    tables = [f for m in MODELS for d in DATASETS for f in atlas_tables(m, d)]
    tables += expand("results/metrics/{model}/{dataset}/icl_accuracy.parquet", model=MODELS, dataset=DATASETS)
    if config["anchors"]["reweighting"]["enabled"]:
        tables += expand("results/metrics/{model}/{dataset}/reweighting.parquet", model=MODELS,
                         dataset=running("reweighting", anchor_datasets()))
    tables += expand("results/metrics/{model}/{dataset}/patching.parquet", model=MODELS, dataset=patching_datasets())
    return tables + icicl_targets() + tsft_targets()


def summary_targets():
    return ([f"results/figures/{m}/{d}/layer_atlas.png" for m in MODELS for d in DATASETS if atlas_tables(m, d)]
            + ["results/summary/headline.csv", "results/summary/peak_layers.csv"])


def toy_regression_targets():
    if not config["toy_regression"]["enabled"]:
        return []
    return ["results/metrics/toy/regression/toy_regression.parquet", "results/figures/toy/regression/toy_regression.png"]


def all_targets():
    return (activation_targets() + metric_targets() + taskspace_targets() + icicl_targets() + tsft_targets()
            + layer_lora_targets() + figure_targets() + anchor_targets() + error_diagnosis_targets() + entropy_targets()
            + toy_regression_targets() + summary_targets())


def shard_of(wildcards):
    """'2-of-3' -> (2, 3); unsharded -> (1, 1)."""
    item = getattr(wildcards, "scatteritem", "1-of-1")
    i, n = item.split("-of-")
    return int(i), int(n)
