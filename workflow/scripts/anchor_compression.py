from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.compression import AnchorCompressionSettings, run_anchor_compression

log = log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake)
settings = AnchorCompressionSettings(**job["compression"], word_k=job["word_k"])
table, meta, _ = run_anchor_compression(
    snakemake.input.prompts, snakemake.input.model, job.model(), settings=settings, dataset=snakemake.wildcards.dataset
)
write_table(
    table, snakemake.output[0], {"anchors": {"compression": job["compression"], "word_k": job["word_k"]}, **meta}
)
log.info(
    "anchor compression, mean over seeds:\n%s",
    table.pivot_table(index="arm", columns="metric", values="value").round(3).to_string(),
)
