from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import read_table, write_table
from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid
from iclscope.methods.taskspace.icicl.sweep import sweep_icicl
from iclscope.methods.taskspace.space import read_task_spaces

log = log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake)
settings = ICICLSettings(**job["icicl"])  # word loyalty is not scored: word_k is no key
grid = SweepGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["sweep"].items()})
spaces = {v: read_task_spaces(snakemake.input.taskspace, v) for v in grid.task_spaces if v in ("class_mean", "anchor")}
table, meta = sweep_icicl(
    read_table(snakemake.input.dataset),
    job.dataset(),
    snakemake.input.model,
    job.model(),
    spaces,
    settings,
    grid,
    **job["taskspace"],
)
write_table(table, snakemake.output[0], meta)
log.info(
    "IC-ICL validation sweep:\n%s\nchosen per arm: %s\nbudget: %s",
    table.to_string(),
    meta["chosen_by_arm"],
    meta["tuning"],
)
