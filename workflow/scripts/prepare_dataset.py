from iclscope.core.job import job_of
from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.data.datasets import prepare_dataset

log_to(snakemake.log[0], threads=snakemake.threads)
table, meta = prepare_dataset(job_of(snakemake).dataset())
write_table(table, snakemake.output[0], meta)
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
