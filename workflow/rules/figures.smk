# Every figure: one figure of a family in the registry (iclscope/core/families.py: its path, inputs and
# report category), one generated rule `fig_<name>`, one script (scripts/figure.py), which draws it
# with iclscope.report.plots.draw(<name>, inputs, png). A figure reads only its inputs; the caption of
# the HTML report is workflow/report/<name>.rst.


def figure_input(pattern):
    """A figure's input: a path pattern, or for a pattern over TS-FT's runs ({arm}, {seed}) every run
    of the job's model × dataset."""
    if "{seed}" not in pattern:
        return pattern
    return lambda wc: [pattern.format(model=wc.model, dataset=wc.dataset, arm=arm, seed=seed)
                       for arm in TSFT_ARMS for seed in PLAN.tsft_seeds()]  # expand()'s list, cheaper per job


def figure_subcategory(directory):
    return {"results/figures/toy/regression": "toy / regression",
            "results/figures/toy/{dataset}": "toy models / {dataset}"}.get(directory, "{model} / {dataset}")


for _figure in families.figures():
    _name, _directory = _figure.name, str(Path(_figure.path).parent)

    rule:
        name:
            f"fig_{_name}"
        input:
            **{key: figure_input(pattern) for key, pattern in _figure.inputs},
        output:
            report(
                _figure.path,
                caption=f"../report/{_name}.rst",
                category=families.category(_name),
                subcategory=figure_subcategory(_directory),
            ),
        params:
            figure=_figure.plot or _name,
            code=code_of("figure.py"),
        log:
            f"logs/{_directory.replace('results/', '', 1)}/{_name}.log",
        conda:
            "../envs/iclscope.yaml"
        group:  # small CPU jobs: many per sbatch job on SLURM (profiles/slurm: group-components)
            None if _figure.big else SMALL_JOBS
        resources:
            **({} if _figure.big else small_job_resources()),
        script:
            "../scripts/figure.py"
