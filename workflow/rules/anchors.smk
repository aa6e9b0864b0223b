rule aucroc:
    """AUCROC_l and R_l: how well the query's attention to label words predicts the model's answer."""
    input:
        "results/activations/{model}/{dataset}.h5",
    output:
        "results/metrics/{model}/{dataset}/aucroc.parquet",
    params:
        code=code_of("aucroc.py"),
    log:
        "logs/aucroc/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/aucroc.py"


rule anchors:
    """Named target: every label-anchor metric and figure."""
    input:
        family_targets("anchors"),


rule saliency:
    """Label-word saliency flows S_wp, S_pq, S_ww per layer (forward + backward, eager attention)."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        examples="results/anchors/{model}/{dataset}/saliency_examples.parquet",
        table="results/metrics/{model}/{dataset}/saliency.parquet",
    params:
        settings=settings_of("saliency"),
        code=code_of("saliency.py"),
    log:
        "logs/saliency/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("saliency"),
    script:
        "../scripts/saliency.py"


rule isolation:
    """Label / word loyalty with label words (or random tokens) isolated in the first or last k layers."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/metrics/{model}/{dataset}/isolation.parquet",
    params:
        settings=settings_of("isolation"),
        code=code_of("isolation.py"),
    log:
        "logs/isolation/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("isolation"),
    script:
        "../scripts/isolation.py"


rule reweighting:
    """Anchor re-weighting: a learnt exp(β) per layer × head × demonstration on the query's attention
    to each label word, fitted on train prompts, against vanilla ICL on the same test prompts."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        table="results/metrics/{model}/{dataset}/reweighting.parquet",
        beta="results/anchors/{model}/{dataset}/reweighting_beta.npz",
    params:
        settings=settings_of("reweighting"),
        code=code_of("reweighting.py"),
    log:
        "logs/reweighting/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("reweighting"),
    script:
        "../scripts/reweighting.py"


rule error_diagnosis:
    """Error diagnosis with anchor keys: confusion predicted from the label words' attention keys (seen
    through the PCA of the query vectors at one layer) against the model's true confusion (AUC per class
    pair from the label logits of the activation file). Datasets with >= 3 classes only."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        activations="results/activations/{model}/{dataset}.h5",
        model="results/models/{model}.json",
    output:
        "results/metrics/{model}/{dataset}/error_diagnosis.parquet",
    params:
        settings=settings_of("error_diagnosis"),
        code=code_of("error_diagnosis.py"),
    log:
        "logs/error_diagnosis/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("error_diagnosis"),
    script:
        "../scripts/error_diagnosis.py"


rule anchor_compression:
    """Anchor-only context compression in the paper's setting: the demonstrations run once, their KV kept
    only at template, label and separator tokens, the query continuing that cache (Hidden_anchor),
    against full ICL, Text_anchor, Hidden_random(-top) and zero-shot; accuracy, loyalties, speed-up."""
    input:
        prompts="results/prompts/{model}/{dataset}.parquet",
        model="results/models/{model}.json",
    output:
        "results/metrics/{model}/{dataset}/anchor_compression.parquet",
    params:
        settings=settings_of("anchor_compression"),
        code=code_of("anchor_compression.py"),
    log:
        "logs/anchor_compression/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("anchor_compression"),
    script:
        "../scripts/anchor_compression.py"
