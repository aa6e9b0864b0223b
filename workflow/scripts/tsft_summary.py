from iclscope.logs import log_to
from iclscope.tables import write_table
from iclscope.tsft import summary_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
table = summary_table(list(snakemake.input), model=wc.model, dataset=wc.dataset)
write_table(table, snakemake.output[0], {"runs": [str(p) for p in snakemake.input]})
log.info("TS-FT vs baseline:\n%s", table[table.metric.isin(["accuracy", "gain"])].to_string())
