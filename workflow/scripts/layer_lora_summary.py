from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.decodability.layer_lora import summary_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
runs = dict(
    zip(snakemake.params.arms, zip(snakemake.input.runs, snakemake.input.activations, strict=True), strict=True)
)
table = summary_table(
    snakemake.input.base,
    runs,
    model=wc.model,
    dataset=wc.dataset,
    decodability=job["decodability"],
    n_boot=job["n_boot"],
)
write_table(table, snakemake.output[0], {"decodability": job["decodability"], "n_boot": job["n_boot"]})
acc = table[(table.metric == "accuracy") & (table.task == "all")]
peak = table[table.metric == "decodability_euclidean_peak"]
log.info("accuracy (all tasks):\n%s", acc.pivot_table(index="arm", columns="shots", values="value").to_string())
log.info(
    "peak decodability (euclidean):\n%s", peak.pivot_table(index="arm", columns="shots", values="value").to_string()
)
