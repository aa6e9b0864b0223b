from iclscope.logs import log_to
from iclscope.plots import plot_decodability
from iclscope.tables import read_table

log_to(snakemake.log[0], threads=snakemake.threads)
plot_decodability(read_table(snakemake.input.decodability), read_table(snakemake.input.accuracy), snakemake.output[0])
