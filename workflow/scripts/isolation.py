from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.isolation import run_isolation

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
s = job["anchors"]
table, meta, _ = run_isolation(
    snakemake.input.prompts,
    snakemake.input.model,
    job.model(),
    n_per_seed=s["isolation_prompts_per_seed"],
    ks=s["isolation_k"],
    word_k=s["word_k"],
    dataset=wc.dataset,
)
write_table(table, snakemake.output[0], {"anchors": s, **meta})
log.info(
    "loyalty:\n%s",
    table.pivot_table(index=["variant", "arm"], columns=["metric", "n_layers"], values="value").round(3).to_string(),
)
