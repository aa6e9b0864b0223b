rule icicl:
    """IC-ICL (task-space soft tokens), task vector, anchor-only KV / text / random baselines, zero-shot and
    full-text ICL on the same retrieved demos; accuracy, label / word loyalty vs full ICL, seconds."""
    input:
        model="results/models/{model}.json",
        dataset="results/datasets/{dataset}.parquet",
        taskspace="results/taskspace/{model}/{dataset}.h5",
    output:
        predictions="results/icicl/{model}/{dataset}/predictions.parquet",
        table="results/metrics/{model}/{dataset}/icicl.parquet",
    params:
        settings=settings_of("icicl"),
        code=code_of("icicl.py"),
    log:
        "logs/icicl/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: 2
    resources:
        mem_mb=model_mem_mb,
        gpu=model_gpus,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    script:
        "../scripts/icicl.py"


rule icicl_all:
    """Named target: every IC-ICL evaluation."""
    input:
        icicl_targets(),
