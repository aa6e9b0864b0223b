rule prepare_dataset:
    """Load, decode, filter and split one dataset into the normalised Parquet table."""
    input:
        local_source,
    output:
        "results/datasets/{dataset}.parquet",
    params:
        identity=dataset_identity,
        version=ICLSCOPE_VERSION,
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    cache: "omit-software"
    script:
        "../scripts/prepare_dataset.py"
