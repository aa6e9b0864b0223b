from iclscope.config import DatasetSpec
from iclscope.datasets import prepare_dataset
from iclscope.logs import log_to
from iclscope.tables import write_table

log_to(snakemake.log[0], threads=snakemake.threads)
name = snakemake.wildcards.dataset
table, meta = prepare_dataset(DatasetSpec.from_config(name, snakemake.config["datasets"][name]))
write_table(table, snakemake.output[0], meta)
