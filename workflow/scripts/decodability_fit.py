from iclscope.core.logs import log_to
from iclscope.core.tables import read_table, write_table
from iclscope.methods.decodability.fit import decodability_accuracy_fit

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
points, table = decodability_accuracy_fit(
    read_table(snakemake.input.decodability), read_table(snakemake.input.accuracy), model=wc.model, dataset=wc.dataset
)
write_table(points, snakemake.output.points)
write_table(table, snakemake.output.table)
log.info("points:\n%s\nfit:\n%s", points.to_string(), table[["metric", "value"]].to_string())
