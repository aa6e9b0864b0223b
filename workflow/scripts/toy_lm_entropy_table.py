import pandas as pd

from iclscope.core.logs import log_to
from iclscope.core.tables import read_meta, read_table, write_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
table = pd.concat([read_table(path) for path in snakemake.input], ignore_index=True)
write_table(table, snakemake.output[0], read_meta(snakemake.input[0]))
log.info("%d rows from %d sizes: %s", len(table), len(snakemake.input), sorted(set(table["size"])))
