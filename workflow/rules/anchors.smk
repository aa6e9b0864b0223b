rule aucroc:
    """AUCROC_l and R_l: how well the query's attention to label words predicts the model's answer."""
    input:
        "results/activations/{model}/{dataset}.h5",
    output:
        "results/metrics/{model}/{dataset}/aucroc.parquet",
    log:
        "logs/aucroc/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/aucroc.py"


rule fig_aucroc:
    input:
        "results/metrics/{model}/{dataset}/aucroc.parquet",
    output:
        report(
            "results/figures/{model}/{dataset}/aucroc.png",
            caption="../report/aucroc.rst",
            category="Label words as anchors",
            subcategory="{model} / {dataset}",
        ),
    log:
        "logs/figures/{model}/{dataset}/aucroc.log",
    conda:
        "../envs/iclscope.yaml"
    script:
        "../scripts/fig_aucroc.py"


rule anchors:
    """Named target: every label-anchor metric and figure."""
    input:
        anchor_targets(),
