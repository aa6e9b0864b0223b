# Every figure: one row of FIGURES, one generated rule `fig_<name>`, one script (scripts/figure.py),
# which draws it with iclscope.report.plots.draw(<name>, inputs, png). A figure reads only its inputs; the
# caption of the HTML report is workflow/report/<name>.rst.

TASK_SPACES = "Task spaces (information bottleneck)"
ANCHORS = "Label words as anchors"
DECODABILITY = "Task decodability"
LANGUAGE = "Representations as language"
METRICS = "results/metrics/{model}/{dataset}"
FIGURES_DIR = "results/figures/{model}/{dataset}"

# name: (inputs, report category, figure directory); inputs None = {"table": METRICS/<name>.parquet}
FIGURES = {
    "compression": (None, TASK_SPACES, FIGURES_DIR),
    "task_space": ({"activations": "results/activations/{model}/{dataset}.h5",
                    "taskspace": "results/taskspace/{model}/{dataset}.h5",
                    "compression": f"{METRICS}/compression.parquet"}, TASK_SPACES, FIGURES_DIR),
    "icicl": (None, TASK_SPACES, FIGURES_DIR),
    "icicl_sweep": ({"table": "results/icicl/{model}/{dataset}/sweep.parquet"}, TASK_SPACES, FIGURES_DIR),
    "tsft": ({"summary": f"{METRICS}/tsft.parquet", "runs": lambda wc: tsft_runs(wc.model, wc.dataset)},
             TASK_SPACES, FIGURES_DIR),
    "decodability": ({"decodability": f"{METRICS}/decodability.parquet",
                      "accuracy": f"{METRICS}/icl_accuracy.parquet"}, DECODABILITY, FIGURES_DIR),
    "patching": (None, DECODABILITY, FIGURES_DIR),
    "layer_lora": (None, DECODABILITY, FIGURES_DIR),
    "toy_regression": ({"table": "results/metrics/toy/regression/toy_regression.parquet"}, DECODABILITY,
                       "results/figures/toy/regression"),
    "aucroc": (None, ANCHORS, FIGURES_DIR),
    "saliency": (None, ANCHORS, FIGURES_DIR),
    "isolation": (None, ANCHORS, FIGURES_DIR),
    "reweighting": (None, ANCHORS, FIGURES_DIR),
    "anchor_compression": (None, ANCHORS, FIGURES_DIR),
    "error_diagnosis": (None, ANCHORS, FIGURES_DIR),
    "entropy": (None, LANGUAGE, FIGURES_DIR),
    "entropy_training": ({"table": "results/metrics/toy/{dataset}/entropy_training.parquet"}, LANGUAGE,
                         "results/figures/toy/{dataset}"),
}


BIG_FIGURES = {"task_space"}  # reads activation files: its own job with the default resources


def figure_subcategory(directory):
    return {"results/figures/toy/regression": "toy / regression",
            "results/figures/toy/{dataset}": "toy models / {dataset}"}.get(directory, "{model} / {dataset}")


for _name, (_inputs, _category, _directory) in FIGURES.items():

    rule:
        name:
            f"fig_{_name}"
        input:
            **(_inputs or {"table": f"{METRICS}/{_name}.parquet"}),
        output:
            report(
                f"{_directory}/{_name}.png",
                caption=f"../report/{_name}.rst",
                category=_category,
                subcategory=figure_subcategory(_directory),
            ),
        params:
            figure=_name,
            code=code_of("figure.py"),
        log:
            f"logs/{_directory.replace('results/', '', 1)}/{_name}.log",
        conda:
            "../envs/iclscope.yaml"
        group:  # small CPU jobs: many per sbatch job on SLURM (profiles/slurm: group-components)
            None if _name in BIG_FIGURES else SMALL_JOBS
        resources:
            **({} if _name in BIG_FIGURES else small_job_resources()),
        script:
            "../scripts/figure.py"
