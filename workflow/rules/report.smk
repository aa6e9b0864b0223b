# Figures (matplotlib PNGs that stand alone) and their captions for `snakemake --report`.


rule fig_compression:
    input:
        "results/metrics/{model}/{dataset}/compression.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/compression.png",
            caption="../report/compression.rst",
            category="Task spaces (information bottleneck)",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_compression.py"),
    log:
        "logs/figures/{model}/{dataset}/compression.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_compression.py"


rule fig_task_space:
    input:
        activations="results/activations/{model}/{dataset}.h5",
        taskspace="results/taskspace/{model}/{dataset}.h5",
        compression="results/metrics/{model}/{dataset}/compression.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/task_space.png",
            caption="../report/task_space.rst",
            category="Task spaces (information bottleneck)",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_task_space.py"),
    log:
        "logs/figures/{model}/{dataset}/task_space.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_task_space.py"


rule fig_icicl:
    input:
        "results/metrics/{model}/{dataset}/icicl.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/icicl.png",
            caption="../report/icicl.rst",
            category="Task spaces (information bottleneck)",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_icicl.py"),
    log:
        "logs/figures/{model}/{dataset}/icicl.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_icicl.py"


rule fig_icicl_sweep:
    input:
        "results/icicl/{model}/{dataset}/sweep.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/icicl_sweep.png",
            caption="../report/icicl_sweep.rst",
            category="Task spaces (information bottleneck)",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_icicl_sweep.py"),
    log:
        "logs/figures/{model}/{dataset}/icicl_sweep.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_icicl_sweep.py"


rule fig_tsft:
    input:
        summary="results/metrics/{model}/{dataset}/tsft.parquet",
        runs=lambda wc: tsft_runs(wc.model, wc.dataset),
    output:
        report(
            "results/figures/{model}/{dataset}/tsft.png",
            caption="../report/tsft.rst",
            category="Task spaces (information bottleneck)",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_tsft.py"),
    log:
        "logs/figures/{model}/{dataset}/tsft.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_tsft.py"


rule fig_decodability:
    input:
        decodability="results/metrics/{model}/{dataset}/decodability.parquet",
        accuracy="results/metrics/{model}/{dataset}/icl_accuracy.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/decodability.png",
            caption="../report/decodability.rst",
            category="Task decodability",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_decodability.py"),
    log:
        "logs/figures/{model}/{dataset}/decodability.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_decodability.py"


rule fig_patching:
    input:
        "results/metrics/{model}/{dataset}/patching.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/patching.png",
            caption="../report/patching.rst",
            category="Task decodability",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("fig_patching.py"),
    log:
        "logs/figures/{model}/{dataset}/patching.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_patching.py"


rule figures:
    """Named target: every figure."""
    input:
        figure_targets(),


rule layer_atlas:
    """Every layer-wise curve of one model × dataset on a relative-depth axis, with peak layers."""
    input:
        tables=atlas_inputs,
        manifest="results/models/{model}.json",
    output:
        peaks="results/metrics/{model}/{dataset}/peak_layers.parquet",
        figure=report(
            "results/figures/{model}/{dataset}/layer_atlas.png",
            caption="../report/layer_atlas.rst",
            category="Layer atlas",
            subcategory="{model} / {dataset}",
        ),
    params:
        code=code_of("layer_atlas.py"),
    log:
        "logs/layer_atlas/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/layer_atlas.py"


rule summary:
    """Headline numbers and peak layers across every model × dataset."""
    input:
        tables=summary_tables(),
        peaks=[f"results/metrics/{m}/{d}/peak_layers.parquet" for m in MODELS for d in DATASETS if atlas_tables(m, d)],
    output:
        headline=report("results/summary/headline.csv", caption="../report/summary.rst", category="Summary"),
        peaks=report("results/summary/peak_layers.csv", caption="../report/summary.rst", category="Summary"),
    params:
        code=code_of("summary.py"),
    log:
        "logs/summary.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/summary.py"
