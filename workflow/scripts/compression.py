from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.taskspace.compression import compression_table
from iclscope.methods.taskspace.view import task_space_view

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
table = compression_table(snakemake.input.activations, snakemake.input.taskspace, model=wc.model, dataset=wc.dataset)
write_table(table, snakemake.output.table, {"source": snakemake.input.taskspace})
view = task_space_view(
    snakemake.input.activations, snakemake.input.taskspace, table, model=wc.model, dataset=wc.dataset
)
write_table(view, snakemake.output.view, {"source": snakemake.input.taskspace})
best = table[table.metric == "decoding_accuracy"].sort_values("value").tail(3)
log.info("best task decoding:\n%s\ntask-space view at layer %d", best.to_string(), view["layer"].iloc[0])
