rule icl_accuracy:
    """Per-prompt predictions and ICL accuracy per seed / task, with the majority-class baseline."""
    input:
        "results/activations/{model}/{dataset}.h5",
    output:
        table="results/metrics/{model}/{dataset}/icl_accuracy.parquet",
        predictions="results/predictions/{model}/{dataset}.parquet",
    params:
        settings=settings_of("icl_accuracy"),
        code=code_of("icl_accuracy.py"),
    log:
        "logs/icl_accuracy/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/icl_accuracy.py"


rule decodability:
    """Task decodability per layer (leave-one-out k-NN over query states, docs/methods.md §4.2)."""
    input:
        "results/activations/{model}/{dataset}.h5",
    output:
        "results/metrics/{model}/{dataset}/decodability.parquet",
    params:
        settings=settings_of("decodability"),
        code=code_of("decodability.py"),
    log:
        "logs/decodability/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        **cpu_stage_resources("decodability"),
    script:
        "../scripts/decodability.py"


rule metrics:
    """Named target: every metric table."""
    input:
        metric_targets(),


rule decodability_fit:
    """Decodability at the peak layer vs ICL accuracy, one point per task and shot count; R²."""
    input:
        decodability="results/metrics/{model}/{dataset}/decodability.parquet",
        accuracy="results/metrics/{model}/{dataset}/icl_accuracy.parquet",
    output:
        points="results/metrics/{model}/{dataset}/decodability_fit_points.parquet",
        table="results/metrics/{model}/{dataset}/decodability_fit.parquet",
    params:
        code=code_of("decodability_fit.py"),
    log:
        "logs/decodability_fit/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/decodability_fit.py"


rule patching:
    """Activation patching: the own task's (or Null's) mean query state written into the query at one
    layer, answers regenerated; accuracy change per task."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        activations="results/activations/{model}/{dataset}.h5",
        decodability="results/metrics/{model}/{dataset}/decodability.parquet",
        model="results/models/{model}.json",
    output:
        table="results/metrics/{model}/{dataset}/patching.parquet",
        answers="results/patching/{model}/{dataset}/answers.parquet",
    params:
        settings=settings_of("patching"),
        code=code_of("patching.py"),
    log:
        "logs/patching/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("patching"),
    script:
        "../scripts/patching.py"
