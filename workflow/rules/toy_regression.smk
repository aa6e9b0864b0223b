# A small transformer trained from scratch on sparse linear regression (docs/methods.md §4.3): no
# pretrained model, no dataset; CPU is enough for the default budget.


rule toy_regression:
    """Train the regression transformer; per-basis MSE, MSE by examples seen (with least-squares
    references) and basis decodability per layer, at log-spaced steps."""
    output:
        table="results/metrics/toy/regression/toy_regression.parquet",
        weights=directory("results/toy/regression/weights"),
    params:
        settings=settings_of("toy_regression"),
        code=code_of("toy_regression.py"),
    log:
        "logs/toy_regression.log",
    conda:
        "../envs/iclscope.yaml"
    threads: PLAN.toy_threads()  # 1 for small models (no faster on two threads), more for wide ones
    resources:
        runtime=lambda wc, attempt: 60 * attempt,
    script:
        "../scripts/toy_regression.py"
