rule extract_anchors:
    """Label words in neutral carrier prompts -> anchor states (task-space variant A)."""
    input:
        model="results/models/{model}.json",
    output:
        "results/activations/{model}/{dataset}.anchors.h5",
    params:
        settings=settings_of("extract_anchors"),
        code=code_of("extract_anchors.py"),
        store=store_of("extract_anchors"),
    log:
        "logs/extract_anchors/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("extract_anchors"),
    script:
        "../scripts/extract_anchors.py"


rule taskspace:
    """Per-layer task-space bases, both variants, PCA-denoised (CPU, reads HDF5 only)."""
    input:
        activations="results/activations/{model}/{dataset}.h5",
        anchors="results/activations/{model}/{dataset}.anchors.h5",
    output:
        "results/taskspace/{model}/{dataset}.h5",
    params:
        settings=settings_of("taskspace"),
        code=code_of("taskspace.py"),
    log:
        "logs/taskspace/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        **cpu_stage_resources("taskspace"),
    script:
        "../scripts/taskspace.py"


rule compression:
    """Energy ratio, decoding accuracy and I(C;Y) in the task space, per layer and position; the 2-D
    view of the test queries at the best-decoding layer (the task_space figure draws it)."""
    input:
        activations="results/activations/{model}/{dataset}.h5",
        taskspace="results/taskspace/{model}/{dataset}.h5",
    output:
        table="results/metrics/{model}/{dataset}/compression.parquet",
        view="results/taskspace/{model}/{dataset}.view.parquet",  # the task_space figure's points
    params:
        code=code_of("compression.py"),
    log:
        "logs/compression/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        **cpu_stage_resources("compression"),
    script:
        "../scripts/compression.py"


rule taskspaces:
    """Named target: every task space's compression diagnostics and their figures."""
    input:
        family_targets("taskspaces"),
