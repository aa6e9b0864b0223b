rule prepare_dataset:
    """Load, decode, filter and split one dataset into the normalised Parquet table."""
    input:
        local_source,
    output:
        "results/datasets/{dataset}.parquet",
    params:
        settings=settings_of("prepare_dataset"),
        code=code_of("prepare_dataset.py"),
        store=store_of("prepare_dataset"),
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/prepare_dataset.py"
