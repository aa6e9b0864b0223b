rule build_prompts:
    """k-shot prompts with every token position recorded (needs the model's tokenizer)."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/prompts/{model}/{dataset}.parquet",
    params:
        settings=settings_of("build_prompts"),
        code=code_of("build_prompts.py"),
    log:
        "logs/build_prompts/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/build_prompts.py"
