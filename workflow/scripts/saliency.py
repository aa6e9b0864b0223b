from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.saliency import run_saliency

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
settings = job["anchors"]
per_example, table = run_saliency(
    snakemake.input.prompts,
    snakemake.input.model,
    job.model(),
    settings["saliency_prompts_per_seed"],
    dataset=wc.dataset,
)
write_table(per_example, snakemake.output.examples, {"anchors": settings})
write_table(table, snakemake.output.table, {"anchors": settings})
rel = table[table.metric.str.endswith("_relative")].pivot_table(index="layer", columns="metric", values="value")
log.info("relative saliency flows per layer (mean over seeds):\n%s", rel.round(3).to_string())
