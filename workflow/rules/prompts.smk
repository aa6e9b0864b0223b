rule build_prompts:
    """k-shot prompts with every token position recorded (needs the model's tokenizer)."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/prompts/{model}/{dataset}.parquet",
    params:
        prompts=lambda wc: as_json(DATASETS[wc.dataset].prompts.__dict__),
    log:
        "logs/build_prompts/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/build_prompts.py"
