"""Which methods run on which dataset: the planning behind `rule all`, as plain functions.

`Plan(config)` answers, for a validated config, which datasets each method family runs on
(its kind, the dataset's `methods:` key, the family's `enabled` switch, and what the method
needs: several tasks for decodability, demonstrations for the anchor methods, three or more
classes for error diagnosis). Which tables and figures a family makes, and which the atlas reads, is
the family registry's (iclscope.core.families); `Plan.targets` turns both into the file lists of
`rule all` and the `metrics` / `figures` targets, so the planning is unit-tested without Snakemake.

No torch / transformers import: the Snakefile imports this at parse time.
"""

from __future__ import annotations

from iclscope.core.config import DatasetSpec, ModelSpec
from iclscope.core.families import BY_NAME, FAMILIES, Output

ANCHOR_METHODS = ("aucroc", "saliency", "isolation", "reweighting", "anchor_compression")
SWITCHED = {"reweighting": "reweighting", "anchor_compression": "compression"}  # method -> anchors.<key>.enabled
LAYER_LORA_ARMS = ("first", "last")
TSFT_ARMS = ("space", "baseline")


def toy_threads(d_model: int) -> int:
    """Threads for training a toy transformer of width d_model: one up to 128 (measured: the default
    sizes, d_model 32-128, run no faster on two threads than on one, so two jobs share two cores),
    then one per 128 dimensions up to 8 (a paper-size toy, d_model 512-1024 at 40k steps, is
    matmul-bound). Snakemake caps a rule's threads at the cores it was given."""
    return 1 if d_model <= 128 else min(8, d_model // 128)


class Plan:
    def __init__(self, config: dict):
        self.config = config
        self.models = {name: ModelSpec.from_config(name, spec) for name, spec in config["models"].items()}
        self.datasets = {name: DatasetSpec.from_config(name, spec) for name, spec in config["datasets"].items()}
        self._selected: dict[str, tuple[str, ...]] = {}  # datasets_for per selector (the config is fixed)

    def enabled(self, family: str) -> bool:
        return self.config[family].get("enabled", True)

    def running(self, method: str, names) -> list[str]:
        """The datasets among `names` whose `methods:` key lets `method` run (null = all)."""
        return [n for n in names if self.datasets[n].runs(method)]

    # --- dataset groups
    def classification(self) -> list[str]:
        return [n for n, d in self.datasets.items() if d.kind == "classification"]

    def generation(self) -> list[str]:
        return [n for n, d in self.datasets.items() if d.kind == "generation"]

    def task_families(self) -> list[str]:
        """Datasets whose prompts span several tasks (decodability needs more than one)."""
        return [n for n, d in self.datasets.items() if d.kind == "generation" or d.task_column]

    def with_demonstrations(self) -> list[str]:
        """Classification datasets whose prompts have demonstrations (label positions): the anchor methods."""
        return [n for n in self.classification() if self.datasets[n].prompts.shots_per_class > 0]

    # --- per method family: the datasets it runs on (an Output's `datasets` names one of these)
    def every_dataset(self) -> list[str]:
        return list(self.datasets)

    def decodability(self) -> list[str]:
        return self.running("decodability", self.task_families())

    def patching(self) -> list[str]:
        """Generation task families: their answers are generated, so a patched state can change them."""
        if not self.enabled("patching"):
            return []
        return self.running("patching", [n for n in self.task_families() if self.datasets[n].kind == "generation"])

    def taskspace(self) -> list[str]:
        return self.running("taskspace", self.classification())

    def icicl(self) -> list[str]:
        return self.running("icicl", self.classification()) if self.enabled("icicl") else []

    def icicl_sweep(self) -> list[str]:
        """The validation sweep runs in the default target only when icicl.sweep.enabled (its own target always)."""
        return self.icicl() if self.config["icicl"]["sweep"]["enabled"] else []

    def tsft(self) -> list[str]:
        return self.running("tsft", self.classification()) if self.enabled("tsft") else []

    def tsft_seeds(self) -> list[int]:
        return list(self.config["tsft"]["seeds"])

    def layer_lora(self) -> list[str]:
        return self.running("layer_lora", self.generation()) if self.enabled("layer_lora") else []

    def anchor_methods(self, dataset: str) -> list[str]:
        """The anchor methods that run on `dataset` (none without demonstrations)."""
        if dataset not in self.with_demonstrations():
            return []
        anchors = self.config["anchors"]
        methods = [m for m in ANCHOR_METHODS if m not in SWITCHED or anchors[SWITCHED[m]]["enabled"]]
        return [m for m in methods if self.datasets[dataset].runs(m)]

    def anchor(self, method: str) -> list[str]:
        """The datasets anchor method `method` runs on."""
        return [d for d in self.datasets if method in self.anchor_methods(d)]

    def aucroc(self) -> list[str]:
        return self.anchor("aucroc")

    def saliency(self) -> list[str]:
        return self.anchor("saliency")

    def isolation(self) -> list[str]:
        return self.anchor("isolation")

    def reweighting(self) -> list[str]:
        return self.anchor("reweighting")

    def anchor_compression(self) -> list[str]:
        return self.anchor("anchor_compression")

    def error_diagnosis(self) -> list[str]:
        """Anchor datasets with >= 3 classes (one class pair cannot be correlated)."""
        return [
            d
            for d in self.running("error_diagnosis", self.with_demonstrations())
            if len(self.datasets[d].class_names) >= 3
        ]

    def entropy(self) -> list[str]:
        return list(self.config["entropy"]["datasets"]) if self.enabled("entropy") else []

    def toy_corpus(self) -> str | None:
        """The dataset the toy LMs are trained on, or None."""
        training = self.config["entropy"]["training"]
        if not (self.enabled("entropy") and training["enabled"]):
            return None
        return training["dataset"] or next(iter(self.config["entropy"]["datasets"]), None)

    def toy_corpora(self) -> list[str]:
        """The toy LMs' corpus as a list (empty when they are not trained)."""
        corpus = self.toy_corpus()
        return [corpus] if corpus else []

    def toy_lm_sizes(self) -> list[str]:
        return [size["name"] for size in self.config["entropy"]["training"]["sizes"]]

    def toy_regression(self) -> bool:
        return self.enabled("toy_regression")

    def toy_regression_runs(self) -> list[str]:
        """One run (its products' paths have no model or dataset) when the toy regression is on."""
        return ["regression"] if self.toy_regression() else []

    def toy_threads(self, size: str | None = None) -> int:
        """CPU threads of a toy training job: of the toy LM `size` (by name), or of the regression
        transformer (None). Their scripts hand the rule's `threads` to torch (core.logs.log_to) and
        train on CUDA when the job was given a GPU (model.models.resolve_device)."""
        if size is None:
            return toy_threads(self.config["toy_regression"]["d_model"])
        sizes = {s["name"]: s for s in self.config["entropy"]["training"]["sizes"]}
        return toy_threads(sizes[size]["d_model"])

    # --- products: every table and figure of every family (iclscope.core.families)
    def datasets_for(self, name: str) -> list[str]:
        """The datasets of selector `name` (an Output's `datasets`): this Plan's method of that name, or
        for a family without one (a new family needs none) the datasets of its kinds whose `methods:`
        lets it run, while its section's `enabled` (default true) is on. Computed once per selector:
        the Snakefile asks it for every model × dataset (summary and atlas inputs)."""
        if name not in self._selected:
            self._selected[name] = tuple(self._datasets_for(name))
        return list(self._selected[name])

    def _datasets_for(self, name: str) -> list[str]:
        method = getattr(self, name, None)
        if callable(method):
            return list(method())
        family = BY_NAME[name]
        if not self.config.get(family.section, {}).get("enabled", True):
            return []
        return self.running(name, [n for n, d in self.datasets.items() if d.kind in family.kinds])

    def paths(self, output: Output) -> list[str]:
        """The files of `output` (a family's table or figure): one per model × dataset it is made for,
        one in all for a toy product (no {model} in its path)."""
        datasets = self.datasets_for(output.datasets)
        models = self.models if "{model}" in output.path else [None]
        return list(dict.fromkeys(output.path.format(model=m, dataset=d) for m in models for d in datasets))

    def targets(self, what: str = "both", families=None) -> list[str]:
        """Every metric table ("tables"), figure ("figures") or both of `families` (names; None =
        every family): `rule all` and the `metrics` / `figures` targets (workflow/rules/common.smk)."""
        chosen = [f for f in FAMILIES if families is None or f.name in families]
        kinds = ("tables", "figures") if what == "both" else (what,)
        return [path for f in chosen for kind in kinds for output in getattr(f, kind) for path in self.paths(output)]

    def figure_inputs(self) -> set[str]:
        """Every file the planned figures read (their tables), TS-FT's runs aside (a pattern over
        {arm} and {seed}: no target names a run). `rule all` leaves these out: each figure's job
        brings its own (workflow/rules/common.smk, all_targets)."""
        read = set()
        for figure in (fig for f in FAMILIES for fig in f.figures):
            datasets = self.datasets_for(figure.datasets)
            models = self.models if "{model}" in figure.path else [None]
            for _, pattern in figure.inputs:
                if "{seed}" not in pattern:
                    read.update(pattern.format(model=m, dataset=d) for m in models for d in datasets)
        return read

    def atlas_tables(self, dataset: str) -> list[str]:
        """The layer-wise metric tables of one model × dataset (what the layer atlas draws)."""
        return [
            t.name for f in FAMILIES for t in f.tables if t.name in f.atlas and dataset in self.datasets_for(t.datasets)
        ]

    def summary_tables(self, dataset: str) -> list[str]:
        """The tables of one model × dataset the headline summary reads: the atlas's and the families' own."""
        own = [
            t.name
            for f in FAMILIES
            for t in f.tables
            if t.name in f.summary and dataset in self.datasets_for(t.datasets)
        ]
        return self.atlas_tables(dataset) + own
