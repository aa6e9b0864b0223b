from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.aucroc import aucroc_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
table = aucroc_table(snakemake.input[0], model=wc.model, dataset=wc.dataset)
write_table(table, snakemake.output[0], {"source": snakemake.input[0]})
log.info(
    "AUCROC_l per layer (mean over seeds):\n%s",
    table[table.metric == "aucroc"].groupby("layer")["value"].mean().round(3).to_string(),
)
