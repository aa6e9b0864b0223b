rule tsft:
    """LoRA fine-tuning with the task-space loss (arm 'space') or without it (arm 'baseline')."""
    input:
        model="results/models/{model}.json",
        dataset="results/datasets/{dataset}.parquet",
        taskspace="results/taskspace/{model}/{dataset}.h5",
    output:
        directory("results/tsft/{model}/{dataset}/{arm}-seed{seed}"),
    params:
        settings=settings_of("tsft"),
        code=code_of("tsft.py"),
    log:
        "logs/tsft/{model}/{dataset}/{arm}-seed{seed}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("tsft"),
    script:
        "../scripts/tsft.py"


rule tsft_summary:
    """TS-FT against its lambda = 0 baseline: accuracy and held-out losses per arm and seed, the paired
    gain space - baseline over the test prompts (per seed and pooled) with its interval and p-value."""
    input:
        lambda wc: tsft_runs(wc.model, wc.dataset),
    output:
        "results/metrics/{model}/{dataset}/tsft.parquet",
    params:
        settings=settings_of("tsft_summary"),
        code=code_of("tsft_summary.py"),
    log:
        "logs/tsft_summary/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/tsft_summary.py"


rule tsft_all:
    """Named target: every TS-FT comparison and its figure."""
    input:
        family_targets("tsft_all"),
