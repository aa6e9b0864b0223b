# icicl.settings_from: sweep: each dataset's icicl job reads its tuned arms' settings from its own sweep table
ICICL_SWEEP_INPUT = (
    {"sweep": "results/icicl/{model}/{dataset}/sweep.parquet"} if config["icicl"]["settings_from"] == "sweep" else {}
)


rule icicl:
    """IC-ICL (task-space soft tokens), task vector, anchor-only KV / text / random baselines, zero-shot and
    full-text ICL on the same retrieved demos; accuracy, label / word loyalty vs full ICL, seconds. With
    icicl.settings_from: sweep the tuned arms run with the settings this dataset's own sweep chose."""
    input:
        model="results/models/{model}.json",
        dataset="results/datasets/{dataset}.parquet",
        taskspace="results/taskspace/{model}/{dataset}.h5",
        **ICICL_SWEEP_INPUT,
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
    threads: model_threads
    resources:
        **model_stage_resources("icicl"),
    script:
        "../scripts/icicl.py"


rule icicl_all:
    """Named target: every IC-ICL evaluation and its figure (and the sweep when icicl.sweep.enabled)."""
    input:
        family_targets("icicl_all"),


rule icicl_sweep:
    """IC-ICL's reconstruction choices (injection layer, demonstration state, task space, label line)
    scored on a validation split of the train data: the table the icicl defaults are chosen from."""
    input:
        model="results/models/{model}.json",
        dataset="results/datasets/{dataset}.parquet",
        taskspace="results/taskspace/{model}/{dataset}.h5",
    output:
        "results/icicl/{model}/{dataset}/sweep.parquet",
    params:
        settings=settings_of("icicl_sweep"),
        code=code_of("icicl_sweep.py"),
    log:
        "logs/icicl_sweep/{model}/{dataset}.log",
    conda:
        "../envs/iclscope.yaml"
    threads: model_threads
    resources:
        **model_stage_resources("icicl_sweep"),
    script:
        "../scripts/icicl_sweep.py"


rule icicl_sweep_all:
    """Named target: IC-ICL's validation sweep on every dataset IC-ICL runs on."""
    input:
        icicl_sweep_targets(PLAN.running("icicl", PLAN.classification())),
