from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.methods.taskspace.space import build_task_spaces

log = log_to(snakemake.log[0], threads=snakemake.threads)
settings = job_of(snakemake)["taskspace"]
summary = build_task_spaces(
    snakemake.input.activations,
    snakemake.input.anchors,
    snakemake.output[0],
    var_threshold=settings["var_threshold"],
    max_k=settings["max_k"],
)
log.info("task-space dimensions per layer: %s", summary)
