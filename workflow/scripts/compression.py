from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.taskspace.compression import compression_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
table = compression_table(snakemake.input.activations, snakemake.input.taskspace, model=wc.model, dataset=wc.dataset)
write_table(table, snakemake.output[0], {"source": snakemake.input.taskspace})
best = table[table.metric == "decoding_accuracy"].sort_values("value").tail(3)
log.info("best task decoding:\n%s", best.to_string())
