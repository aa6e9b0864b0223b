# Representations as language (METHODS.md §2): per-token residual states over a text corpus,
# then information, variation, regularity and disentanglement per layer.


rule token_states:
    """Residual stream at every token of a fixed corpus (the dataset's text column), in HDF5."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/activations/{model}/{dataset}.tokens.h5",
    params:
        identity=lambda wc: as_json({"model": MODELS[wc.model].identity(), "dtype": MODELS[wc.model].dtype,
                                     "iclscope": ICLSCOPE_VERSION}),
        corpus=lambda wc: as_json({k: config["entropy"][k] for k in CORPUS_KEYS}),
    log:
        "logs/token_states/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    cache: "omit-software"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: MODELS[wc.model].mem_mb * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
        gpu=lambda wc: MODELS[wc.model].gpus,
    script:
        "../scripts/token_states.py"


rule entropy:
    """Information, variation, regularity, disentanglement per layer and label type."""
    input:
        "results/activations/{model}/{dataset}.tokens.h5",
    output:
        "results/metrics/{model}/{dataset}/entropy.parquet",
    params:
        settings=lambda wc: as_json(config["entropy"]),
    log:
        "logs/entropy/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/entropy.py"


rule fig_entropy:
    input:
        "results/metrics/{model}/{dataset}/entropy.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/entropy.png",
            caption="../report/entropy.rst",
            category="Representations as language",
            subcategory="{model} / {dataset}",
        ),
    log:
        "logs/figures/{model}/{dataset}/entropy.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_entropy.py"


rule measures:
    """Named target: the entropy measures and their figures."""
    input:
        entropy_targets(),


rule toy_lm_entropy:
    """One small GPT-2 trained from scratch on the corpus; loss and the four measures over training.
    One job per size: each is single-threaded, so two run side by side on two cores."""
    input:
        dataset="results/datasets/{dataset}.parquet",
        tokenizer=lambda wc: f"results/models/{next(iter(MODELS))}.json",
    output:
        table="results/metrics/toy/{dataset}/entropy_training/{size}.parquet",
        weights=directory("results/toy/{dataset}/weights/{size}"),
    wildcard_constraints:
        size="[^/]+",
    params:
        settings=lambda wc: as_json(toy_lm_settings(wc.size)),
    log:
        "logs/toy_lm_entropy/{dataset}/{size}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: 1  # small models run no faster on two threads (measured: slower), so it runs beside another job
    resources:
        runtime=lambda wc, attempt: 60 * attempt,
    script:
        "../scripts/toy_lm_entropy.py"


rule toy_lm_entropy_table:
    """The sizes' training tables as one."""
    input:
        lambda wc: expand("results/metrics/toy/{{dataset}}/entropy_training/{size}.parquet", size=toy_lm_sizes()),
    output:
        "results/metrics/toy/{dataset}/entropy_training.parquet",
    log:
        "logs/toy_lm_entropy/{dataset}/table.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/toy_lm_entropy_table.py"


rule fig_entropy_training:
    input:
        "results/metrics/toy/{dataset}/entropy_training.parquet",
    output:
        report(
            "results/figures/toy/{dataset}/entropy_training.png",
            caption="../report/entropy_training.rst",
            category="Representations as language",
            subcategory="toy models / {dataset}",
        ),
    log:
        "logs/figures/toy/{dataset}/entropy_training.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_entropy_training.py"
