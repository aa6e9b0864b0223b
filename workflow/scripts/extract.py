from iclscope.core.job import job_of
from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.model.extract import ExtractSettings, extract

log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake)
shard = tuple(int(x) for x in snakemake.params.shard.split("-of-"))
extract(
    snakemake.input.prompts,
    snakemake.input.model,
    snakemake.output[0],
    job.model(),
    ExtractSettings.from_config(job["extract"]),
    shard=shard,
)
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
