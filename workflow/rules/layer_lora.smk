# LoRA on the first n vs the last n transformer layers (Han et al., docs/methods.md §4.5), on the
# generation task families: train an arm, merge it into the weights (a temporary model
# directory), run the dataset's prompts through the existing extraction, and compare task
# decodability and ICL accuracy with the base model's activation file.


rule layer_lora:
    """LoRA on the first or the last n blocks, answer-token loss on k-shot train-split prompts; the
    merged model is a temporary prepared-model directory (deleted once extracted)."""
    input:
        model="results/models/{model}.json",
        dataset="results/datasets/{dataset}.parquet",
    output:
        run=directory("results/layer_lora/{model}/{dataset}/{arm}"),
        merged=temp(directory("results/layer_lora/{model}/{dataset}/{arm}.model")),
    wildcard_constraints:
        arm="first|last",
    params:
        settings=settings_of("layer_lora"),
        code=code_of("layer_lora.py"),
    log:
        "logs/layer_lora/{model}/{dataset}/{arm}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("layer_lora"),
    script:
        "../scripts/layer_lora.py"


rule layer_lora_prompts:
    """The dataset's prompt sets at the shot count LoRA trains at (the merged models see only these)."""
    input:
        "results/prompts/{model}/{dataset}.parquet",
    output:
        temp("results/layer_lora/{model}/{dataset}/prompts.parquet"),
    params:
        settings=settings_of("layer_lora_prompts"),
        code=code_of("layer_lora_prompts.py"),
    log:
        "logs/layer_lora_prompts/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/layer_lora_prompts.py"


rule layer_lora_extract:
    """The training shot count's prompts through the merged model: the same extraction as the base model's."""
    input:
        prompts="results/layer_lora/{model}/{dataset}/prompts.parquet",
        model="results/layer_lora/{model}/{dataset}/{arm}.model",
    output:
        "results/layer_lora/{model}/{dataset}/{arm}.h5",
    wildcard_constraints:
        arm="first|last",
    params:
        settings=settings_of("extract"),
        code=code_of("extract.py"),
        shard="1-of-1",
    log:
        "logs/layer_lora_extract/{model}/{dataset}/{arm}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("layer_lora_extract"),
    script:
        "../scripts/extract.py"


rule layer_lora_summary:
    """Accuracy per task and decodability per layer for base / first / last, and their changes."""
    input:
        base="results/activations/{model}/{dataset}.h5",
        runs=expand("results/layer_lora/{{model}}/{{dataset}}/{arm}", arm=LAYER_LORA_ARMS),
        activations=expand("results/layer_lora/{{model}}/{{dataset}}/{arm}.h5", arm=LAYER_LORA_ARMS),
    output:
        "results/metrics/{model}/{dataset}/layer_lora.parquet",
    params:
        settings=settings_of("layer_lora_summary"),
        code=code_of("layer_lora_summary.py"),
        arms=LAYER_LORA_ARMS,
    log:
        "logs/layer_lora_summary/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/layer_lora_summary.py"


rule layer_lora_all:
    """Named target: the first-vs-last-layer LoRA comparison of every generation task family."""
    input:
        family_targets("layer_lora_all"),
