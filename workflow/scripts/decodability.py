import json

from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.decodability.knn import decodability_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
settings = job_of(snakemake)["decodability"]
table, attrs = decodability_table(snakemake.input[0], model=wc.model, dataset=wc.dataset, **settings)
write_table(table, snakemake.output[0], {"settings": settings, "prompts_sha256": attrs["prompts_sha256"]})
log.info("peak layers: %s", json.dumps(attrs.get("peak_layers", {})))
