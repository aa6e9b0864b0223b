from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import read_meta, read_table, write_table
from iclscope.methods.taskspace.icicl.evaluate import evaluate_icicl
from iclscope.methods.taskspace.icicl.settings import SweepGrid, evaluation_settings
from iclscope.methods.taskspace.icicl.tables import metric_table, paired_table
from iclscope.methods.taskspace.space import read_task_spaces

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
# icicl.settings_from: sweep: the tuned arms' settings are this dataset's sweep's choice (its table, an input)
sweep = read_meta(snakemake.input.sweep) if job["icicl"].get("settings_from") == "sweep" else None
settings, source = evaluation_settings(job["icicl"], job["word_k"], sweep)
spaces = {v: read_task_spaces(snakemake.input.taskspace, v) for v in (settings.task_space,) if v != "pool"}
per_example, summary, meta = evaluate_icicl(
    read_table(snakemake.input.dataset),
    job.dataset(),
    snakemake.input.model,
    job.model(),
    spaces,
    settings,
    **job["taskspace"],
    grid=SweepGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["sweep"].items()}),
    source=source,
)
paired = paired_table(per_example, settings.n_boot, settings.seed)
write_table(per_example, snakemake.output.predictions, meta)
write_table(
    metric_table(summary, paired, model=wc.model, dataset=wc.dataset, arm_settings=meta["arm_settings"]),
    snakemake.output.table,
    meta,
)
log.info("IC-ICL summary:\n%s\npaired:\n%s\n%s", summary.to_string(), paired.to_string(), meta)
