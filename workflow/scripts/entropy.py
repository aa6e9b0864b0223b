from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.entropy.measures import EntropySettings
from iclscope.methods.entropy.table import entropy_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
cfg = job_of(snakemake)["entropy"]
settings = EntropySettings(n_bins=cfg["n_bins"], min_labels=cfg["min_labels"], clip_quantile=cfg["clip_quantile"])
table = entropy_table(snakemake.input[0], model=wc.model, dataset=wc.dataset, settings=settings)
write_table(table, snakemake.output[0], {"entropy": cfg})
main = table[table.variant == "token"].pivot_table(index="layer", columns="metric", values="value")
log.info(
    "token-label measures per layer (min/max binning):\n%s",
    main[["information", "variation", "regularity", "disentanglement", "max_bin_share"]].round(4).to_string(),
)
