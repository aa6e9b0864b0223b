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
    log:
        "logs/figures/{model}/{dataset}/icicl.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_icicl.py"


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
    log:
        "logs/figures/{model}/{dataset}/decodability.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_decodability.py"


rule figures:
    """Named target: every figure."""
    input:
        figure_targets(),
