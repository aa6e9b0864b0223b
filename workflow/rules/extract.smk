rule extract:
    """Forward passes -> residual stream, query->label attention, logits in HDF5 (GPU when present)."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}",
    output:
        "results/activations/{model}/{dataset}.h5",
    params:
        identity=extract_identity,
    log:
        "logs/extract/{model}/{dataset}.log",
    cache: "omit-software"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: MODELS[wc.model].mem_mb * attempt,
        gpu=lambda wc: MODELS[wc.model].gpus,
    script:
        "../scripts/extract.py"


rule activations:
    """Named target: every activation file."""
    input:
        activation_targets(),
