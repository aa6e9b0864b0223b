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
        settings=lambda wc: as_json({**config["icicl"], "word_k": config["anchors"]["word_k"]}),
        prompts=lambda wc: as_json(DATASETS[wc.dataset].prompts.__dict__),
    log:
        "logs/icicl/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: MODELS[wc.model].mem_mb * attempt,
        gpu=lambda wc: MODELS[wc.model].gpus,
    script:
        "../scripts/icicl.py"


rule icicl_all:
    """Named target: every IC-ICL evaluation."""
    input:
        icicl_targets(),
