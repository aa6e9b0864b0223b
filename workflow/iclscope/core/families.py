"""The method families, one entry each: the one place a family is named (docs/adding-a-family.md).

An entry says which paper the family reproduces, which dataset kinds it applies to (the
`datasets.<name>.methods` enum of workflow/schemas/config.schema.yaml, tied by a test), its config
section, the rules file that holds its rules, its rules, its metric tables and figures (path
patterns, and the `Plan` method that names the datasets each is made for), the tables the layer
atlas and the headline summary read, and the report category of its figures. From it come:

- `METHODS_BY_KIND` (config validation), `Plan.atlas_tables`, `Plan.targets` (core/plan.py);
- `rule all`, the `metrics` and `figures` targets (workflow/rules/common.smk), the figure rules
  (workflow/rules/figures.smk), the rules files the Snakefile includes;
- the expected job lists of tests/workflow.

Planning data only: nothing here reaches what a job computes (a setting that changes a job's bytes
is in the job's params, iclscope.core.jobs), so this module is not part of any code digest
(core.jobs.NOT_PRODUCT_CODE): adding a family reruns no stored product.

No imports beyond the standard library: config.py and the Snakefile import this at parse time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

METRICS = "results/metrics/{model}/{dataset}"
FIGURES = "results/figures/{model}/{dataset}"
KINDS = ("classification", "generation")

# report categories (the sections of `snakemake --report`)
TASK_SPACES = "Task spaces (information bottleneck)"
ANCHORS = "Label words as anchors"
DECODABILITY = "Task decodability"
LANGUAGE = "Representations as language"


@dataclass(frozen=True)
class Output:
    """One table or figure of a family, made once per model × dataset of `datasets`.

    `path`: its pattern ({model}, {dataset}; a toy product has no {model}). `datasets`: the name of
    the `Plan` method that lists its datasets. `rule`: the rule that writes it. A figure's `inputs`
    are (name, pattern) pairs handed to iclscope.report.plots.draw; a pattern with {arm} and {seed}
    stands for every TS-FT run of the job's model × dataset. `big`: a figure that reads activation
    files (its own job with the default resources, not grouped with the small ones). `plot`: the
    figure's drawing in iclscope.report.plots.draw when not its own name ("layer_curves": any
    table of rows layer, metric, value)."""

    name: str
    path: str
    datasets: str
    rule: str
    inputs: tuple[tuple[str, str], ...] = ()
    big: bool = False
    plot: str = ""

    def __post_init__(self):
        if not self.path.startswith("results/") or "{dataset}" not in self.path and "toy/" not in self.path:
            raise ValueError(f"{self.name}: a product path is results/... per {{dataset}} (toy products aside)")


def table(name: str, datasets: str, rule: str | None = None, path: str | None = None) -> Output:
    """Metric table `name` (results/metrics/{model}/{dataset}/<name>.parquet unless `path`)."""
    return Output(name, path or f"{METRICS}/{name}.parquet", datasets, rule or name)


def figure(
    name: str, datasets: str, inputs: dict | None = None, path: str | None = None, big: bool = False, plot: str = ""
) -> Output:
    """Figure `name` (results/figures/{model}/{dataset}/<name>.png unless `path`), drawn by rule
    fig_<name> from `inputs` (default: {"table": the metric table of the same name}) with
    plots.plot_<name>, or plots.plot_<plot>."""
    inputs = inputs or {"table": f"{METRICS}/{name}.parquet"}
    return Output(name, path or f"{FIGURES}/{name}.png", datasets, f"fig_{name}", tuple(inputs.items()), big, plot)


@dataclass(frozen=True)
class Family:
    """One method family. `name` is its key in `datasets.<name>.methods` when `selectable` (the
    dataset picks it); the others run where their own section says (icl_accuracy: every dataset,
    entropy: entropy.datasets, toy_regression: no dataset). `kinds`: the dataset kinds it applies to.
    `section`: its config section (a top-level key of the schema). `rules_file`: workflow/rules/<file>.
    `rules`: every rule its jobs run (figure rules included). `atlas` / `summary`: its tables the layer
    atlas / the headline summary read. `checks`: its config rules beyond the schema, each (validated
    config) -> problems (iclscope.core.validate.validate_config runs them; they refuse, never change)."""

    name: str
    paper: str
    kinds: tuple[str, ...]
    section: str
    rules_file: str
    rules: tuple[str, ...]
    tables: tuple[Output, ...] = ()
    figures: tuple[Output, ...] = ()
    atlas: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()
    category: str = ""
    selectable: bool = True
    targets: tuple[str, ...] = field(default=())  # its named target rules
    checks: tuple[Callable[[dict], list[str]], ...] = ()

    def __post_init__(self):
        if not set(self.kinds) <= set(KINDS):
            raise ValueError(f"family {self.name}: kinds {self.kinds} not among {KINDS}")
        names = {t.name for t in self.tables}
        if not (set(self.atlas) | set(self.summary)) <= names:
            raise ValueError(f"family {self.name}: atlas/summary tables must be among its tables {sorted(names)}")
        if not {o.rule for o in (*self.tables, *self.figures)} <= set(self.rules):
            raise ValueError(f"family {self.name}: every table's and figure's rule must be among its rules")
        if self.figures and not self.category:
            raise ValueError(f"family {self.name}: a family with figures names their report category")


# --------------------------------------------------------------------------------------------
# the families' own config rules (beyond the schema): (validated config) -> problems


def _runs_on(spec: dict, family: str) -> bool:
    """Whether `family` runs on a classification dataset `spec` (its `methods:` list allowing it)."""
    classification = spec.get("kind", "classification") == "classification"
    return classification and (spec.get("methods") is None or family in spec["methods"])


def _reweighting_rules(config: dict) -> list[str]:
    """Re-weighting fits β on labelled train prompts: enough of them per class."""
    reweighting, problems = config["anchors"]["reweighting"], []
    for name, spec in config["datasets"].items() if reweighting["enabled"] else []:
        prompts, classes = spec.get("prompts") or {}, spec.get("classes") or {}
        if not _runs_on(spec, "reweighting") or prompts.get("shots_per_class", 1) < 1:
            continue
        needed = reweighting["aux_per_class"] * len(classes)
        if prompts.get("n_train", 0) < needed:
            problems.append(
                f"config key 'datasets.{name}.prompts.n_train' is {prompts.get('n_train', 0)}, but anchor "
                f"re-weighting fits on anchors.reweighting.aux_per_class={reweighting['aux_per_class']} "
                f"train prompts per class: set n_train >= {needed}, or anchors.reweighting.enabled: false"
            )
    return problems


def _tsft_rules(config: dict) -> list[str]:
    """TS-FT draws its train / validation / test prompts balanced over the classes."""
    tsft, problems = config["tsft"], []
    for name, spec in config["datasets"].items() if tsft["enabled"] else []:
        classes = spec.get("classes") or {}
        if not _runs_on(spec, "tsft"):
            continue
        for key in ("n_train", "n_val", "n_test"):
            if tsft[key] < len(classes):
                problems.append(
                    f"config key 'tsft.{key}' is {tsft[key]}, fewer than the {len(classes)} classes of "
                    f"dataset '{name}' (TS-FT draws them balanced over the classes): raise it, or "
                    "tsft.enabled: false"
                )
    return problems


def _entropy_rules(config: dict) -> list[str]:
    """The corpora it names are datasets; each toy size's heads divide its width."""
    entropy, problems = config["entropy"], []
    for name in entropy["datasets"] if entropy["enabled"] else []:
        if name not in config["datasets"]:
            problems.append(
                f"config key 'entropy.datasets' names '{name}', which is not in datasets "
                f"(have: {sorted(config['datasets'])})"
            )
    training = entropy["training"]
    if training["enabled"] and training["dataset"] is not None and training["dataset"] not in config["datasets"]:
        problems.append(
            f"config key 'entropy.training.dataset' names '{training['dataset']}', which is not in "
            f"datasets (have: {sorted(config['datasets'])})"
        )
    for size in training["sizes"]:
        if size["d_model"] % size["n_heads"]:
            problems.append(
                f"config key 'entropy.training.sizes' ({size['name']}): d_model {size['d_model']} is not "
                f"divisible by n_heads {size['n_heads']}"
            )
    return problems


def _toy_regression_rules(config: dict) -> list[str]:
    """The toy's heads divide its width; its bases fit the input dimension disjointly."""
    toy, problems = config["toy_regression"], []
    if toy["enabled"] and toy["d_model"] % toy["n_heads"]:
        problems.append(
            f"config key 'toy_regression.d_model' {toy['d_model']} is not divisible by "
            f"toy_regression.n_heads {toy['n_heads']}"
        )
    if toy["enabled"] and toy["n_bases"] * toy["basis_size"] > toy["dim"]:
        problems.append(
            f"config key 'toy_regression.dim' {toy['dim']} is too small for n_bases {toy['n_bases']} "
            f"x basis_size {toy['basis_size']} disjoint coordinates"
        )
    return problems


def _anchor(
    name: str, paper: str, atlas: bool = False, summary: bool = False, rules: tuple = (), checks: tuple = ()
) -> Family:
    """One of Wang et al.'s label-anchor analyses: one table, one figure, on classification datasets
    with demonstrations (Plan.anchor_methods)."""
    return Family(
        name,
        paper,
        ("classification",),
        "anchors",
        "anchors.smk",
        (name, *rules, f"fig_{name}"),
        tables=(table(name, name),),
        figures=(figure(name, name),),
        atlas=(name,) if atlas else (),
        summary=(name,) if summary else (),
        category=ANCHORS,
        targets=("anchors",),
        checks=checks,
    )


WANG = "Wang et al. 2023, Label words are anchors (docs/methods.md §3)"

# In this order: the atlas reads its tables in this order (Plan.atlas_tables), the Snakefile
# includes the rules files in this order.
FAMILIES: tuple[Family, ...] = (
    Family(
        "icl_accuracy",
        "ICL accuracy with the majority-class baseline, read by every paper (docs/methods.md §0, §3.1)",
        KINDS,
        "icl_accuracy",
        "metrics.smk",
        ("icl_accuracy",),
        tables=(table("icl_accuracy", "every_dataset"),),
        summary=("icl_accuracy",),
        selectable=False,
    ),
    Family(
        "decodability",
        "Han et al. 2024, task decodability (docs/methods.md §4.2, §4.4)",
        KINDS,
        "decodability",
        "metrics.smk",
        ("decodability", "decodability_fit", "fig_decodability"),
        tables=(table("decodability", "decodability"), table("decodability_fit", "decodability")),
        figures=(
            figure(
                "decodability",
                "decodability",
                {"decodability": f"{METRICS}/decodability.parquet", "accuracy": f"{METRICS}/icl_accuracy.parquet"},
            ),
        ),
        atlas=("decodability",),
        category=DECODABILITY,
    ),
    Family(
        "patching",
        "Han et al. 2024, activation patching (docs/methods.md §4.5)",
        ("generation",),
        "patching",
        "metrics.smk",
        ("patching", "fig_patching"),
        tables=(table("patching", "patching"),),
        figures=(figure("patching", "patching"),),
        summary=("patching",),
        category=DECODABILITY,
    ),
    Family(
        "taskspace",
        "Yang et al. 2025, task spaces and compression (docs/methods.md §1.2, §1.3)",
        ("classification",),
        "taskspace",
        "taskspace.smk",
        ("extract_anchors", "taskspace", "compression", "fig_compression", "fig_task_space"),
        tables=(table("compression", "taskspace"),),
        figures=(
            figure("compression", "taskspace"),
            # the 2-D view the compression job writes beside its table (methods/taskspace/view.py)
            figure("task_space", "taskspace", {"table": "results/taskspace/{model}/{dataset}.view.parquet"}),
        ),
        atlas=("compression",),
        category=TASK_SPACES,
        targets=("taskspaces",),
    ),
    Family(
        "icicl",
        "Yang et al. 2025, IC-ICL (docs/methods.md §1.4)",
        ("classification",),
        "icicl",
        "icicl.smk",
        ("icicl", "icicl_sweep", "fig_icicl", "fig_icicl_sweep"),
        tables=(
            table("icicl", "icicl"),
            table("icicl_sweep", "icicl_sweep", "icicl_sweep", "results/icicl/{model}/{dataset}/sweep.parquet"),
        ),
        figures=(
            figure("icicl", "icicl"),
            figure("icicl_sweep", "icicl_sweep", {"table": "results/icicl/{model}/{dataset}/sweep.parquet"}),
        ),
        summary=("icicl",),
        category=TASK_SPACES,
        targets=("icicl_all", "icicl_sweep_all"),
    ),
    Family(
        "tsft",
        "Yang et al. 2025, TS-FT (docs/methods.md §1.5)",
        ("classification",),
        "tsft",
        "tsft.smk",
        ("tsft", "tsft_summary", "fig_tsft"),
        tables=(table("tsft", "tsft", "tsft_summary"),),
        figures=(
            figure(
                "tsft",
                "tsft",
                {"summary": f"{METRICS}/tsft.parquet", "runs": "results/tsft/{model}/{dataset}/{arm}-seed{seed}"},
            ),
        ),
        summary=("tsft",),
        category=TASK_SPACES,
        targets=("tsft_all",),
        checks=(_tsft_rules,),
    ),
    Family(
        "layer_lora",
        "Han et al. 2024, first- vs last-layer fine-tuning (docs/methods.md §4.5)",
        ("generation",),
        "layer_lora",
        "layer_lora.smk",
        ("layer_lora", "layer_lora_prompts", "layer_lora_extract", "layer_lora_summary", "fig_layer_lora"),
        tables=(table("layer_lora", "layer_lora", "layer_lora_summary"),),
        figures=(figure("layer_lora", "layer_lora"),),
        category=DECODABILITY,
        targets=("layer_lora_all",),
    ),
    _anchor("saliency", WANG, atlas=True),
    _anchor("aucroc", WANG, atlas=True),
    _anchor("isolation", WANG, atlas=True),
    _anchor("reweighting", WANG, summary=True, checks=(_reweighting_rules,)),
    _anchor("anchor_compression", WANG),
    _anchor("error_diagnosis", WANG),
    Family(
        "entropy",
        "Conklin & Smith 2024, representations as language (docs/methods.md §2)",
        KINDS,
        "entropy",
        "entropy.smk",
        ("token_states", "entropy", "toy_lm_entropy", "toy_lm_entropy_table", "fig_entropy", "fig_entropy_training"),
        tables=(
            table("entropy", "entropy"),
            table(
                "entropy_training",
                "toy_corpora",
                "toy_lm_entropy_table",
                "results/metrics/toy/{dataset}/entropy_training.parquet",
            ),
        ),
        figures=(
            figure("entropy", "entropy"),
            figure(
                "entropy_training",
                "toy_corpora",
                {"table": "results/metrics/toy/{dataset}/entropy_training.parquet"},
                "results/figures/toy/{dataset}/entropy_training.png",
            ),
        ),
        atlas=("entropy",),
        category=LANGUAGE,
        selectable=False,
        targets=("measures",),
        checks=(_entropy_rules,),
    ),
    Family(
        "toy_regression",
        "Han et al. 2024, toy model: sparse linear regression (docs/methods.md §4.3)",
        (),
        "toy_regression",
        "toy_regression.smk",
        ("toy_regression", "fig_toy_regression"),
        tables=(
            table(
                "toy_regression", "toy_regression_runs", path="results/metrics/toy/regression/toy_regression.parquet"
            ),
        ),
        figures=(
            figure(
                "toy_regression",
                "toy_regression_runs",
                {"table": "results/metrics/toy/regression/toy_regression.parquet"},
                "results/figures/toy/regression/toy_regression.png",
            ),
        ),
        category=DECODABILITY,
        selectable=False,
        checks=(_toy_regression_rules,),
    ),
)

BY_NAME = {f.name: f for f in FAMILIES}
# what `datasets.<name>.methods` may pick on a dataset of each kind
METHODS_BY_KIND = {kind: {f.name for f in FAMILIES if f.selectable and kind in f.kinds} for kind in KINDS}
# the rules files of the families, in include order (the Snakefile includes each once)
RULES_FILES = tuple(dict.fromkeys(f.rules_file for f in FAMILIES))


def figures() -> list[Output]:
    """Every figure of every family (one rule fig_<name> each: workflow/rules/figures.smk)."""
    return [fig for f in FAMILIES for fig in f.figures]


def category(figure_name: str) -> str:
    """The report category of figure `figure_name`."""
    return next(f.category for f in FAMILIES for fig in f.figures if fig.name == figure_name)
