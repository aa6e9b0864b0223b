from iclscope.datasets import prepare_dataset
from iclscope.jobs import job_of
from iclscope.logs import log_to
from iclscope.tables import write_table

log_to(snakemake.log[0], threads=snakemake.threads)
table, meta = prepare_dataset(job_of(snakemake).dataset())
write_table(table, snakemake.output[0], meta)
