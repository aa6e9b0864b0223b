# Representations as language (docs/methods.md §2): per-token residual states over a text corpus,
# then information, variation, regularity and disentanglement per layer.


rule token_states:
    """Residual stream at every token of a fixed corpus (the dataset's text column), in HDF5."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/activations/{model}/{dataset}.tokens.h5",
    params:
        settings=settings_of("token_states"),
        code=code_of("token_states.py"),
        store=store_of("token_states"),
    log:
        "logs/token_states/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("token_states"),
    script:
        "../scripts/token_states.py"


rule entropy:
    """Information, variation, regularity, disentanglement per layer and label type."""
    input:
        "results/activations/{model}/{dataset}.tokens.h5",
    output:
        "results/metrics/{model}/{dataset}/entropy.parquet",
    params:
        settings=settings_of("entropy"),
        code=code_of("entropy.py"),
    log:
        "logs/entropy/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        **cpu_stage_resources("entropy"),
    script:
        "../scripts/entropy.py"


rule measures:
    """Named target: the entropy measures and their figures."""
    input:
        family_targets("measures"),


rule toy_lm_entropy:
    """One small GPT-2 trained from scratch on the corpus; loss and the four measures over training.
    One job per size: small ones are single-threaded (two run side by side on two cores), wide ones
    get threads by width (iclscope.core.plan.toy_threads)."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        tokenizer=lambda wc: f"results/models/{next(iter(MODELS))}.json",
    output:
        table="results/metrics/toy/{dataset}/entropy_training/{size}.parquet",
        weights=directory("results/toy/{dataset}/weights/{size}"),
    wildcard_constraints:
        size="[^/]+",
    params:
        settings=settings_of("toy_lm_entropy"),
        code=code_of("toy_lm_entropy.py"),
    log:
        "logs/toy_lm_entropy/{dataset}/{size}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: lambda wc: PLAN.toy_threads(wc.size)
    resources:
        runtime=lambda wc, attempt: 60 * attempt,
    script:
        "../scripts/toy_lm_entropy.py"


rule toy_lm_entropy_table:
    """The sizes' training tables as one."""
    input:
        lambda wc: expand("results/metrics/toy/{{dataset}}/entropy_training/{size}.parquet", size=PLAN.toy_lm_sizes()),
    output:
        "results/metrics/toy/{dataset}/entropy_training.parquet",
    params:
        code=code_of("toy_lm_entropy_table.py"),
    log:
        "logs/toy_lm_entropy/{dataset}/table.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/toy_lm_entropy_table.py"
