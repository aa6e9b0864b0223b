# Extraction of one model x dataset, optionally split into `extract.shards` jobs (one GPU each)
# whose files are gathered into one file of HDF5 virtual datasets (no copy).


scattergather:
    extract=SHARDS,


rule extract:
    """Forward passes -> residual stream, query->label attention, logits in HDF5 (GPU when present)."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        (
            "results/activations/{model}/{dataset}.h5"
            if SHARDS == 1
            else "results/activations/{model}/{dataset}.shards/{scatteritem}.h5"
        ),
    params:
        settings=settings_of("extract"),
        code=code_of("extract.py"),
        shard=lambda wc: "-of-".join(map(str, shard_of(wc))),
        store=store_of("extract"),
    log:
        (
            "logs/extract/{model}/{dataset}.log"
            if SHARDS == 1
            else "logs/extract/{model}/{dataset}.{scatteritem}.log"
        ),
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("extract"),
    script:
        "../scripts/extract.py"


if SHARDS > 1:

    rule gather_activations:
        """One activation file of virtual datasets over the shards."""
        input:
            gather.extract("results/activations/{{model}}/{{dataset}}.shards/{scatteritem}.h5"),
        output:
            "results/activations/{model}/{dataset}.h5",
        params:
            code=code_of("gather_activations.py"),
            store=store_of("gather_activations"),
        log:
            "logs/gather_activations/{model}/{dataset}.log",
        conda:
            "../envs/iclscope.yaml"
        script:
            "../scripts/gather_activations.py"


rule activations:
    """Named target: every activation file."""
    input:
        activation_targets(),
