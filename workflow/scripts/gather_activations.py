from iclscope.core.lab_store import publish_job
from iclscope.core.logs import log_to
from iclscope.core.store import gather_shards

log = log_to(snakemake.log[0], threads=snakemake.threads)
gather_shards(list(snakemake.input), snakemake.output[0])
log.info("gathered %d shards into %s", len(snakemake.input), snakemake.output[0])
publish_job(snakemake)  # into the lab store ($ICLSCOPE_STORE), when there is one
