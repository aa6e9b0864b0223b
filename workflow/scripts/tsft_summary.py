from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.taskspace.tsft_report import summary_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
table = summary_table(list(snakemake.input), model=wc.model, dataset=wc.dataset, n_boot=job["n_boot"])
write_table(table, snakemake.output[0], {"runs": [str(p) for p in snakemake.input], "n_boot": job["n_boot"]})
log.info(
    "TS-FT vs baseline:\n%s",
    table[
        table.metric.isin(["accuracy", "heldout_ce_start", "heldout_ce_end", "gain", "gain_lo", "gain_hi", "p_value"])
    ].to_string(),
)
