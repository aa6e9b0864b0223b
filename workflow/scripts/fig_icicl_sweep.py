from iclscope.logs import log_to
from iclscope.plots import plot_icicl_sweep
from iclscope.tables import read_table

log_to(snakemake.log[0], threads=snakemake.threads)
plot_icicl_sweep(read_table(snakemake.input[0]), snakemake.output[0])
