# The layer atlas and the headline summary (figures: figures.smk), for `snakemake --report`.


rule figures:
    """Named target: every figure."""
    input:
        figure_targets(),


rule layer_atlas:
    """Every layer-wise curve of one model, each of its datasets', on relative-depth axes, with peak layers."""
    input:
        tables=atlas_inputs,
        manifest="results/models/{model}.json",
    output:
        peaks="results/metrics/{model}/peak_layers.parquet",
        figure=report(
            "results/figures/{model}/layer_atlas.png",
            caption="../report/layer_atlas.rst",
            category="Layer atlas",
            subcategory="{model}",
        ),
    params:
        code=code_of("layer_atlas.py"),
    log:
        "logs/layer_atlas/{model}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/layer_atlas.py"


rule summary:
    """Headline numbers and peak layers across every model × dataset; the claims table per dataset and
    pooled over datasets (IC-ICL predictions, TS-FT runs, re-weighting tables: docs/methods.md §0.4)."""
    input:
        tables=summary_tables(),
        peaks=atlas_targets("results/metrics/{model}/peak_layers.parquet"),
        predictions=paths("results/icicl/{model}/{dataset}/predictions.parquet", PLAN.icicl()),
        tsft_runs=[run for m in MODELS for d in PLAN.tsft() for run in tsft_runs(m, d)],
    output:
        headline=report("results/summary/headline.csv", caption="../report/summary.rst", category="Summary"),
        peaks=report("results/summary/peak_layers.csv", caption="../report/summary.rst", category="Summary"),
        claims=report("results/summary/claims.csv", caption="../report/summary.rst", category="Summary"),
    params:
        settings=settings_of("summary"),
        code=code_of("summary.py"),
    log:
        "logs/summary.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/summary.py"
