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
    atlas / the headline summary read."""

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


def _anchor(name: str, paper: str, atlas: bool = False, summary: bool = False, rules: tuple = ()) -> Family:
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
    _anchor("reweighting", WANG, summary=True),
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
