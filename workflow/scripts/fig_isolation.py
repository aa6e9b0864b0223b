from iclscope.logs import log_to
from iclscope.plots import plot_isolation
from iclscope.tables import read_table

log_to(snakemake.log[0], threads=snakemake.threads)
plot_isolation(read_table(snakemake.input[0]), snakemake.output[0])
