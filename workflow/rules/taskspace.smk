rule extract_anchors:
    """Label words in neutral carrier prompts -> anchor states (task-space variant A)."""
    input:
        model="results/models/{model}.json",
    output:
        "results/activations/{model}/{dataset}.anchors.h5",
    params:
        carriers=lambda wc: as_json(config["taskspace"]["carriers"]),
        label_words=lambda wc: as_json(DATASETS[wc.dataset].label_words),
    log:
        "logs/extract_anchors/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        gpu=lambda wc: MODELS[wc.model].gpus,
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
        settings=lambda wc: as_json({k: config["taskspace"][k] for k in ("var_threshold", "max_k")}),
    log:
        "logs/taskspace/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/taskspace.py"


rule compression:
    """Energy ratio, decoding accuracy and I(C;Y) in the task space, per layer and position."""
    input:
        activations="results/activations/{model}/{dataset}.h5",
        taskspace="results/taskspace/{model}/{dataset}.h5",
    output:
        "results/metrics/{model}/{dataset}/compression.parquet",
    log:
        "logs/compression/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/compression.py"


rule taskspaces:
    """Named target: every task space and its compression diagnostics."""
    input:
        taskspace_targets(),
